"""How gradients are reduced and the optimizer stepped: ``train.strategy`` ddp (torch DDP) or deepspeed (ZeRO 1/2).

The trainer drives either through the same calls: ``module`` (what ``task.step`` runs), ``accumulate(last)``
around a micro-batch, ``backward(loss)``, ``discard(loss)`` for the first non-finite micro-batch,
``step(ok) -> (applied, grad_norm)``, and the checkpoint pieces ``optimizer_state`` (in ``train_state.pt``),
``stage_rank_state`` (per-rank files) and ``load_state``. Both strategies step the optimizer and the
warmup + cosine schedule that ``train.optim`` builds, clip at ``optim.grad_clip`` and skip a step whose loss
or gradient norm is non-finite on any rank.

DeepSpeed keeps the parameters in fp32 (its ZeRO 1/2 partitions only optimizer state and gradients) and bf16
is autocast, as under DDP: the same numbers up to reduction order, and every rank holds the whole fp32 model
that checkpoints and evaluation read. The engine's forward turns an outer autocast off unless its own
``torch_autocast`` section is on, so a bf16 run configures that section (with no module's gradients
reduced in bf16, as DDP reduces them in fp32).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from mmpt_lite import distributed as mdist
from mmpt_lite.checkpoint import load_rank_state, rank_state_staging, write_rank_state
from mmpt_lite.config import ConfigError, RunConfig
from mmpt_lite.precision import use_bf16

log = logging.getLogger("mmpt_lite")


def all_ranks_finite(value: torch.Tensor, device: torch.device) -> bool:
    """Whether ``value`` is finite on every rank (all-reduce MIN of a flag: every rank takes the same branch)."""
    flag = torch.isfinite(value.detach()).all().float().reshape(1)
    if mdist.is_dist():
        flag = flag.to(device if device.type == "cuda" else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() > 0)


class DdpStrategy:
    """torch DDP (plain module on one rank); the whole optimizer state lives in ``train_state.pt``."""

    name = "ddp"

    def __init__(self, cfg: RunConfig, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                 device: torch.device):
        self.device, self.optimizer, self.scheduler = device, optimizer, scheduler
        self.world = mdist.get_world_size()
        self.module = (DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
                       if self.world > 1 else model)
        self.max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def accumulate(self, last: bool):
        """Only the last micro-batch of a step all-reduces its gradients."""
        return contextlib.nullcontext() if last or self.world == 1 else self.module.no_sync()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def discard(self, loss: torch.Tensor) -> None:
        """Nothing to do: the gradients of earlier micro-batches are dropped in ``step(ok=False)``."""

    def step(self, ok: bool) -> tuple[bool, torch.Tensor]:
        grad_norm = torch.zeros(())
        if ok:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            grad_norm = torch.nn.utils.clip_grad_norm_(params, self.max_norm)
            ok = all_ranks_finite(grad_norm, self.device)
        if not ok:
            self.optimizer.zero_grad(set_to_none=True)
            return False, grad_norm
        self.optimizer.step()
        self.scheduler.step()
        return True, grad_norm

    def optimizer_state(self) -> dict:
        return self.optimizer.state_dict()

    def stage_rank_state(self, out_dir: Path, step: int) -> Path | None:
        return None

    def load_state(self, optimizer_state: dict, folder: Path) -> None:
        if optimizer_state.get("strategy") == "deepspeed":
            raise ConfigError(f"train.strategy: {folder} was written with train.strategy=deepspeed (its optimizer "
                              "state is split over ranks); resume it with deepspeed, or set train.resume=none")
        self.optimizer.load_state_dict(optimizer_state)


def import_deepspeed(device: torch.device):
    """deepspeed, with its accelerator matching ``device`` (it would otherwise guess from what is installed)."""
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if device.type == "cuda" else "cpu")
    try:
        import deepspeed
    except ImportError as exc:
        raise ConfigError(f"train.strategy: deepspeed is not importable ({exc}); "
                          "pip install 'mmpt_lite[dist]' or use train.strategy=ddp") from None
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)  # its per-init config dump drowns the run log
    return deepspeed


class _ModelWithTaskModules(torch.nn.Module):
    """The model plus the task's own trainable modules (e.g. a learnable temperature), so the engine reduces
    their gradients too; calls go to the model."""

    def __init__(self, model: torch.nn.Module, extra: list[torch.nn.Module]):
        super().__init__()
        self.model = model
        self.extra = torch.nn.ModuleList(extra)

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)


def deepspeed_config(cfg: RunConfig, world: int, device: torch.device) -> dict:
    """The engine's config. No ``bf16`` section (it would store the weights in bf16): bf16 runs autocast."""
    accum = max(1, cfg.optim.accum_steps)
    config = {
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": accum,
        "train_batch_size": cfg.data.batch_size * accum * world,
        # The trainer owns the accumulation boundary: step() after the last micro-batch, and a skipped step
        # (non-finite loss) must not leave the engine's own micro-step count out of phase.
        "managed_gradient_accumulation": False,
        "gradient_clipping": max(0.0, cfg.optim.grad_clip),
        "zero_optimization": {"stage": cfg.train.zero_stage},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    if use_bf16(cfg.train.precision, device):
        config["torch_autocast"] = {"enabled": True, "dtype": "bfloat16", "lower_precision_safe_modules": []}
    return config


class DeepSpeedStrategy:
    """A DeepSpeed engine over the model with ZeRO stage ``train.zero_stage``, given our optimizer and schedule.

    The engine steps the schedule itself, only on applied steps. Its optimizer partitions are saved per rank
    (``rank_state/rank_<R>.pt``: the base optimizer's state over this rank's flat fp32 partition); the fp32
    partition itself equals the saved fp32 weights and is rebuilt from them on resume.
    """

    name = "deepspeed"

    def __init__(self, cfg: RunConfig, model: torch.nn.Module, extra: list[torch.nn.Module],
                 optimizer: torch.optim.Optimizer, scheduler, device: torch.device):
        deepspeed = import_deepspeed(device)
        if not dist.is_initialized():  # one rank (local_single): the engine still wants a process group
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=dist.HashStore(),
                                    rank=0, world_size=1)
        os.environ.setdefault("LOCAL_RANK", str(mdist.env_dist_info().local_rank))  # the engine insists on it
        self.rank, self.world, self.zero_stage = mdist.get_rank(), mdist.get_world_size(), cfg.train.zero_stage
        joint = _ModelWithTaskModules(model, extra) if extra else model
        self.engine, self.zero, _, _ = deepspeed.initialize(model=joint, optimizer=optimizer, lr_scheduler=scheduler,
                                                            config=deepspeed_config(cfg, self.world, device))
        self.module = self.engine
        self.optimizer = optimizer  # the base optimizer; its params are now this rank's flat fp32 partitions

    def zero_grad(self) -> None:
        """Nothing to do: the engine's step clears gradients, applied or skipped."""

    def accumulate(self, last: bool):
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)  # the trainer already divided by accum_steps

    def discard(self, loss: torch.Tensor) -> None:
        """Make this step's gradients NaN so the engine's step drops them with its own clean-up of partitioned
        gradient buffers (called on every rank alike: ZeRO-2's backward is collective)."""
        self.engine.backward(loss * float("nan"), scale_wrt_gas=False)

    def step(self, ok: bool) -> tuple[bool, torch.Tensor]:
        self.engine.step()  # computes the global norm, skips (and clears) when it is not finite, else clips
        applied = self.engine.was_step_applied()
        if applied and not ok:
            raise RuntimeError("deepspeed applied a step whose gradients were poisoned as non-finite")
        norm = self.engine.get_global_grad_norm()
        return applied, torch.tensor(float("nan") if norm is None else float(norm))

    def optimizer_state(self) -> dict:
        return {"strategy": self.name, "zero_stage": self.zero_stage, "world_size": self.world}

    def _rank_state(self) -> dict:
        parts = [p.numel() for g in self.optimizer.param_groups for p in g["params"]]
        return {"optimizer": self.optimizer.state_dict(), "partition_numel": parts}

    def stage_rank_state(self, out_dir: Path, step: int) -> Path:
        """Every rank writes its part into the staging folder (collective); the main rank then moves it into
        the step folder it assembles."""
        staging = rank_state_staging(out_dir, step)
        if self.rank == 0:  # a leftover from a killed run may hold another world size's files
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        mdist.barrier()
        write_rank_state(staging, self.rank, self._rank_state())
        mdist.barrier()
        return staging

    def load_state(self, optimizer_state: dict, folder: Path) -> None:
        """After the model's (and task's) weights are loaded: rebuild fp32 partitions, load this rank's part."""
        if optimizer_state.get("strategy") != self.name:
            raise ConfigError(f"train.strategy: {folder} was written with train.strategy=ddp; resume it with ddp, "
                              "or set train.resume=none")
        saved = (optimizer_state["zero_stage"], optimizer_state["world_size"])
        if saved != (self.zero_stage, self.world):
            raise ConfigError(f"train.zero_stage: {folder} holds ZeRO stage {saved[0]} state over {saved[1]} ranks; "
                              f"this run has stage {self.zero_stage} over {self.world} (resume with the same)")
        part = load_rank_state(folder, self.rank)
        if part["partition_numel"] != self._rank_state()["partition_numel"]:
            raise ConfigError(f"train.strategy: {folder}: rank {self.rank}'s optimizer partition does not match "
                              "this model (different parameters?)")
        self.zero.refresh_fp32_params()  # the fp32 partitions from the weights just loaded into the model
        self.optimizer.load_state_dict(part["optimizer"])


def build_strategy(cfg: RunConfig, model: torch.nn.Module, extra: list[torch.nn.Module],
                   optimizer: torch.optim.Optimizer, scheduler, device: torch.device):
    """The ``train.strategy`` wrapper around ``model`` (already on ``device``)."""
    if cfg.train.strategy == "deepspeed":
        return DeepSpeedStrategy(cfg, model, extra, optimizer, scheduler, device)
    return DdpStrategy(cfg, model, optimizer, scheduler, device)
