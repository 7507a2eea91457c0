"""The training loop: train_step, maybe_checkpoint, maybe_eval.

Parallelism (``train.strategy``: DDP or DeepSpeed ZeRO, ``train/strategy.py``) and precision (bf16 autocast,
``mmpt_lite.precision``) live here, not in model code. A step: accumulate ``accum_steps`` micro-batches, agree
across ranks that every loss is finite, clip, check the gradient norm is finite, then step the optimizer and
the per-step schedule. A non-finite loss or gradient skips the step (counted); ``max_nonfinite`` in a row
stops the run before any NaN weights could be saved.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from mmpt_lite import distributed as mdist
from mmpt_lite.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from mmpt_lite.config import RunConfig
from mmpt_lite.data.loader import TrainLoader
from mmpt_lite.precision import use_bf16
from mmpt_lite.train.logging import MetricLogger
from mmpt_lite.train.optim import build_optimizer, build_scheduler
from mmpt_lite.train.preemption import Preempted, StopRequests, write_marker
from mmpt_lite.train.strategy import all_ranks_finite, build_strategy
from mmpt_lite.train.tasks.base import Task

log = logging.getLogger("mmpt_lite")


class NonFiniteLossError(RuntimeError):
    pass


# Dense bf16 peak FLOP/s by GPU name (substring match on torch.cuda.get_device_name).
PEAK_BF16_TFLOPS = {"H100": 989.0, "H800": 989.0, "H200": 989.0, "H20": 148.0, "A100": 312.0, "A800": 312.0,
                    "L40S": 362.0, "A10": 125.0, "V100": 125.0}


def peak_flops_per_s(device: torch.device, configured_tflops: float = 0.0) -> float:
    """The MFU denominator: ``train.peak_tflops`` if set, else the GPU's dense bf16 peak; 0 if unknown."""
    if configured_tflops > 0:
        return configured_tflops * 1e12
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):  # "H200" before "H20"
            if key in name:
                return PEAK_BF16_TFLOPS[key] * 1e12
    return 0.0


class Trainer:
    """Runs any objective: ``task.step(module, batch)`` gives the loss, the trainer owns everything else."""

    def __init__(self, cfg: RunConfig, *, model: torch.nn.Module, task: Task, loader: TrainLoader,
                 device: torch.device, out_dir: Path, eval_fn: Callable[[torch.nn.Module], dict] | None = None,
                 flops_per_video: float = 0.0, stop: StopRequests | None = None):
        self.cfg, self.device, self.out_dir, self.eval_fn = cfg, device, out_dir, eval_fn
        self.stop = stop  # SIGTERM / SIGUSR1 -> checkpoint and Preempted at the next step boundary
        self.task = task
        self.rank, self.world = mdist.get_rank(), mdist.get_world_size()
        self.model = model.to(device)  # unwrapped: what checkpoints hold and evaluation uses
        if cfg.train.compile:
            # In place and before DDP wraps it, as torch's docs advise (Dynamo traces DDP's hooks poorly): the
            # module stays itself, so state-dict keys have no ``_orig_mod.`` prefix and checkpoints load as before.
            self.model.compile(backend="inductor")
        self.loader = loader
        self.accum = max(1, cfg.optim.accum_steps)
        if cfg.train.epochs > 0:
            self.total_steps = cfg.train.epochs * math.ceil(loader.steps_per_epoch() / self.accum)
        else:
            self.total_steps = cfg.train.max_steps
        self.optimizer = build_optimizer(cfg.optim, [self.model, *task.modules()], fused=device.type == "cuda")
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, self.total_steps)
        self.strategy = build_strategy(cfg, self.model, task.modules(), self.optimizer, self.scheduler, device)
        bf16 = use_bf16(cfg.train.precision, device)
        self.autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
        self.flops_per_video = flops_per_video
        self.peak_flops = peak_flops_per_s(device, cfg.train.peak_tflops) if flops_per_video else 0.0
        self.step = 0
        self.nonfinite_streak = 0
        self.nonfinite_total = 0
        self.last_ckpt_step = -1

    # ------------------------------------------------------------------ state
    def train_state(self) -> dict:
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {"step": self.step, "optimizer": self.strategy.optimizer_state(), "scheduler": self.scheduler.state_dict(),
                "task": self.task.state_dict(), "data_position": self.loader.state_dict(),
                "nonfinite_total": self.nonfinite_total, "world_size": self.world,
                "rng_by_rank": self._gather_rng(rng)}

    def _gather_rng(self, rng: dict) -> list[dict]:
        if self.world == 1:
            return [rng]
        out: list = [None] * self.world
        dist.all_gather_object(out, rng)
        return out

    def maybe_resume(self) -> bool:
        """``train.resume``: auto = the latest checkpoint in output_dir if any; none; or a folder path."""
        mode = self.cfg.train.resume
        if mode == "none":
            return False
        path = latest_checkpoint(self.out_dir) if mode == "auto" else Path(mode)
        if path is None:
            return False
        ckpt = load_checkpoint(path)
        self.model.load_state_dict(ckpt["model"])
        state = ckpt["train_state"]
        self.task.load_state_dict(state["task"])
        self.strategy.load_state(state["optimizer"], path)  # after the weights: ZeRO rebuilds fp32 partitions
        self.scheduler.load_state_dict(state["scheduler"])
        self.loader.load_state_dict(state["data_position"])
        self.step = int(state["step"])
        self.nonfinite_total = int(state["nonfinite_total"])
        rngs = state["rng_by_rank"]
        if len(rngs) == self.world:  # same world size: every rank continues its own random stream
            torch.set_rng_state(rngs[self.rank]["torch"])
            if self.device.type == "cuda" and "cuda" in rngs[self.rank]:
                torch.cuda.set_rng_state(rngs[self.rank]["cuda"], self.device)
        self.last_ckpt_step = self.step
        log.info("resumed from %s (step %d, data position %s)", path, self.step, state["data_position"])
        return True

    # ------------------------------------------------------------------ loop pieces
    def train_step(self, batches) -> dict | None:
        """One optimizer step over ``accum_steps`` micro-batches; None when skipped as non-finite."""
        strategy = self.strategy
        strategy.zero_grad()
        losses, videos, ok = [], 0, True
        for i in range(self.accum):
            batch = next(batches)
            with strategy.accumulate(last=i == self.accum - 1):
                with self.autocast():
                    result = self.task.step(strategy.module, batch)
                loss = result["loss"]
                if not ok:
                    continue
                if not all_ranks_finite(loss, self.device):  # every rank takes the same branch
                    ok = False
                    strategy.discard(loss)
                    continue
                strategy.backward(loss / self.accum)
            losses.append(loss.detach())
            videos += int(result["batch_size"])
        ok, grad_norm = strategy.step(ok)  # clips; skips when the norm is not finite on some rank
        if not ok:
            self.nonfinite_streak += 1
            self.nonfinite_total += 1
            log.warning("step %d: non-finite loss or gradient, step skipped (%d in a row, %d total)",
                        self.step, self.nonfinite_streak, self.nonfinite_total)
            if self.nonfinite_streak >= self.cfg.train.max_nonfinite:
                raise NonFiniteLossError(f"{self.nonfinite_streak} non-finite steps in a row at step {self.step} "
                                         f"(train.max_nonfinite={self.cfg.train.max_nonfinite}); stopping")
            return None
        self.nonfinite_streak = 0
        return {"loss": float(torch.stack(losses).mean()), "grad_norm": float(grad_norm), "videos": videos,
                **{k: float(v) for k, v in result.items() if k != "loss" and torch.is_tensor(v) and v.numel() == 1}}

    def maybe_checkpoint(self, *, force: bool = False) -> None:
        every = self.cfg.train.ckpt_every
        if self.step == self.last_ckpt_step or not (force or (every > 0 and self.step % every == 0)):
            return
        state = self.train_state()  # collective (RNG gather): every rank calls it
        rank_states = self.strategy.stage_rank_state(self.out_dir, self.step)  # collective; None under DDP
        if self.rank == 0:
            path = save_checkpoint(self.out_dir, self.step, model_state=self.model.state_dict(), train_state=state,
                                   cfg=self.cfg, keep_last=self.cfg.train.keep_last, rank_states=rank_states)
            log.info("checkpoint: %s", path)
        self.last_ckpt_step = self.step
        mdist.barrier()

    def evaluate(self) -> dict | None:
        """Run ``eval_fn`` on the main rank with the unwrapped model; others wait."""
        result = None
        if self.eval_fn is not None and self.rank == 0:
            result = self.eval_fn(self.model)
        mdist.barrier()
        return result

    def maybe_eval(self, logger: MetricLogger) -> None:
        every = self.cfg.eval.every_steps
        if every > 0 and self.step % every == 0:
            result = self.evaluate()
            if result:
                logger.log(self.step, {k: v for k, v in result.items() if isinstance(v, (int, float))}, kind="eval")
                log.info("eval step %d: %s", self.step, _fmt(result))

    def _stop_if_requested(self) -> None:
        """At a step boundary: when any rank got SIGTERM / SIGUSR1, checkpoint, mark and raise Preempted."""
        name = self.stop.agreed(self.device) if self.stop is not None else None
        if name is None:
            return
        self.maybe_checkpoint(force=True)  # collective; a step already saved is not written twice
        if self.rank == 0:  # before the barrier below: no rank exits (ending its node's step) before it exists
            write_marker(self.out_dir, self.step, name)
        mdist.barrier()
        if self.rank == 0:
            log.warning("%s received: checkpoint at step %d written; stopping (relaunch the same command to "
                        "resume)", name, self.step)
        raise Preempted(self.step, name)

    # ------------------------------------------------------------------ fit
    def fit(self) -> dict:
        logger = MetricLogger(self.out_dir, total_steps=self.total_steps, start_step=self.step, enabled=self.rank == 0)
        batches = iter(self.loader)
        self.strategy.module.train()
        t0, seen, last = time.perf_counter(), 0, {}
        try:
            while self.step < self.total_steps:
                self._stop_if_requested()
                result = self.train_step(batches)
                if result is None:
                    continue
                self.step += 1
                seen += result["videos"] * self.world
                vps = seen / max(1e-9, time.perf_counter() - t0)
                lr = self.scheduler.get_last_lr()[0]
                last = {"loss": result["loss"], "lr": lr, "grad_norm": result["grad_norm"], "videos_per_s": vps,
                        "videos_per_s_per_device": vps / self.world, "epoch": self.loader.position.epoch,
                        "nonfinite_total": self.nonfinite_total,
                        **{k: v for k, v in result.items() if k not in ("loss", "grad_norm", "videos")}}
                if self.peak_flops:  # MFU = training FLOPs per video x videos/s per device / peak FLOP/s
                    last["mfu"] = self.flops_per_video * vps / self.world / self.peak_flops
                logger.progress(self.step, loss=result["loss"], lr=lr, videos_per_s=vps)
                if self.step % self.cfg.train.log_every == 0 or self.step == self.total_steps:
                    logger.log(self.step, last)
                self.maybe_checkpoint()
                self.maybe_eval(logger)
            self.maybe_checkpoint(force=True)
        finally:
            logger.close()
        return last


def _fmt(d: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in d.items())
