"""Training entry point: ``python -m mmpt_lite.train.main RESOLVED_CONFIG.yaml`` (one rank).

locallaunch.py runs this in-process (local_single) or under torchrun (local_small/local_big/slurm).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from mmpt_lite import distributed as mdist
from mmpt_lite.config import ConfigError, RunConfig, load_config, resolve_path, save_config
from mmpt_lite.data.action_negatives import load_lexicon
from mmpt_lite.data.loader import MilNceClipDataset, TrainLoader
from mmpt_lite.data.prepare import PreparedData, prepare_data
from mmpt_lite.losses.build import build_loss
from mmpt_lite.models.build import build_model
from mmpt_lite.train.logging import setup_logging
from mmpt_lite.train.trainer import NonFiniteLossError, Trainer

log = logging.getLogger("mmpt_lite")


def pick_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", mdist.env_dist_info().local_rank)
    return torch.device("cpu")


def make_eval_fn(cfg: RunConfig, prepared: PreparedData, device: torch.device):
    """Zero-shot MSR-VTT-format retrieval on the held-out set (MIL-NCE's --evaluate), or None."""
    if not cfg.eval.enabled or prepared.msrvtt_csv is None:
        return None
    from mmpt_lite.evaluation.zeroshot import evaluate_retrieval

    def eval_fn(model: torch.nn.Module) -> dict:
        e = cfg.eval
        return evaluate_retrieval(model, prepared.msrvtt_csv, prepared.msrvtt_root, kind="msrvtt",
                                  num_windows=e.num_windows_test, num_frames=e.num_frames, fps=e.fps,
                                  video_size=e.video_size, batch_size=e.batch_size, device=device)
    return eval_fn


def print_final_table(init: dict | None, final: dict | None, out_dir: Path) -> None:
    keys = ["R@1", "R@5", "R@10", "MedR", "MeanR"]
    rows = [("random init", init), ("trained", final)]
    if not any(r for _, r in rows):
        return
    lines = ["zero-shot text->video retrieval, MSR-VTT-format held-out set" +
             (f" ({final.get('num_texts', '?')} texts, chance R@1 = {100.0 / max(1, final.get('num_videos', 1)):.2f}%)"
              if final else ""),
             f"{'model':<12}" + "".join(f"{k:>8}" for k in keys)]
    for name, r in rows:
        if r:
            lines.append(f"{name:<12}" + "".join(f"{r.get(k, float('nan')):>8.2f}" for k in keys))
    text = "\n".join(lines)
    print(text, flush=True)
    (out_dir / "final_eval.txt").write_text(text + "\n")


@dataclass
class Components:
    """What a task contributes to a run; the trainer and loop are shared."""

    model: torch.nn.Module  # the unwrapped model (checkpointed, evaluated)
    loss_fn: torch.nn.Module  # holds trainable loss parameters (e.g. a learnable temperature)
    dataset: object  # indexed by (video index, sample seed), as the TrainLoader's plan yields
    task: Callable | None = None  # (module, batch) -> {"loss", "batch_size", ...}; None = contrastive
    eval_fn: Callable | None = None
    flops_per_video: float = 0.0  # training FLOPs per video (3 x 2 x MACs) for MFU; 0 = not logged


def prepare_for_task(cfg: RunConfig, *, build: bool):
    """The task's input preparation (used by the launcher once and by every rank)."""
    if cfg.train.task == "mae":
        from mmpt_lite.data.video_sets import prepare_mae_data
        return prepare_mae_data(cfg, build=build)
    return prepare_data(cfg, build=build)


def action_negatives(cfg: RunConfig) -> dict:
    """The dataset's hard-negative arguments; a bad lexicon is a ConfigError naming its key."""
    count = cfg.data.action_negatives.count
    if not count:
        return {}
    return {"action_lexicon": load_lexicon(cfg.data), "num_negatives": count,
            "negatives_from_video": cfg.data.action_negatives.pool == "video"}


def build_contrastive_components(cfg: RunConfig, prepared: PreparedData, device: torch.device) -> Components:
    model = build_model(cfg.model, max_words=cfg.data.max_words)
    if cfg.model.video.init_from:
        from mmpt_lite.models.init_from import init_video_tower
        log.info("model.video.init_from: %s", init_video_tower(model, cfg.model.video.init_from))
    dataset = MilNceClipDataset(prepared.video_store, prepared.caption_store, model.tokenizer,
                                num_frames=cfg.data.num_frames, fps=cfg.data.fps, video_size=cfg.data.video_size,
                                num_candidates=cfg.data.num_candidates, min_time=cfg.data.min_time,
                                random_flip=cfg.data.random_flip, clips_per_video=cfg.data.clips_per_video,
                                reversed_twins=cfg.data.reversed_twins, **action_negatives(cfg))
    return Components(model=model, loss_fn=build_loss(cfg.loss), dataset=dataset,
                      eval_fn=make_eval_fn(cfg, prepared, device))


def build_components(cfg: RunConfig, prepared, device: torch.device) -> Components:
    if cfg.train.task == "mae":
        from mmpt_lite.train.mae_task import build_mae_components
        return build_mae_components(cfg, prepared, device)
    return build_contrastive_components(cfg, prepared, device)


def run(cfg: RunConfig, config_path: Path | None = None) -> int:
    device = pick_device(cfg.train.device)
    info = mdist.init_distributed(device)
    setup_logging(info.rank)
    out_dir = resolve_path(cfg.train.output_dir)
    try:
        # Rank 0 builds anything missing (corpus, shards, word vectors); the others wait, then resolve.
        prepared = prepare_for_task(cfg, build=True) if info.is_main else None
        mdist.barrier()
        if prepared is None:
            prepared = prepare_for_task(cfg, build=False)
        cfg = prepared.cfg
        what = (f"video={cfg.model.video.preset}, {cfg.mae.masking} masking {cfg.mae.mask_ratio:g}"
                if cfg.train.task == "mae" else
                f"video={cfg.model.video.preset} text={cfg.model.text.kind} | loss: {cfg.loss.name}")
        log.info("mmpt_lite run | task: %s | data: %s (%d videos, shards %s) | model: %s | ranks: %d on %s",
                 cfg.train.task, prepared.name, prepared.num_videos, prepared.shard_root, what,
                 info.world_size, device)
        if info.is_main:
            save_config(cfg, out_dir / "config.yaml")

        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        parts = build_components(cfg, prepared, device)
        loader = TrainLoader(parts.dataset, batch_size=cfg.data.batch_size, rank=info.rank,
                             world_size=info.world_size, seed=cfg.train.seed, num_workers=cfg.data.num_workers,
                             pin_memory=device.type == "cuda")
        if cfg.retri.enabled:
            from mmpt_lite.retrieval.mining import make_plan_provider
            loader.plan_provider = make_plan_provider(cfg, parts.model, parts.dataset, device)
        trainer = Trainer(cfg, model=parts.model, loss_fn=parts.loss_fn, loader=loader, device=device,
                          out_dir=out_dir, eval_fn=parts.eval_fn, task=parts.task,
                          flops_per_video=parts.flops_per_video)
        resumed = trainer.maybe_resume()
        init_path = out_dir / "eval_init.json"
        if not resumed and trainer.eval_fn is not None:  # the same architecture at its random initialisation
            init = trainer.evaluate()
            if info.is_main and init is not None:
                init_path.write_text(json.dumps(init))
        last = trainer.fit()
        final = trainer.evaluate()
        if info.is_main:
            log.info("done: step %d, last train metrics %s", trainer.step, last)
            init = json.loads(init_path.read_text()) if init_path.is_file() else None
            print_final_table(init, final, out_dir)
            if final is not None:
                (out_dir / "eval_final.json").write_text(json.dumps(final))
        return 0
    except NonFiniteLossError as exc:
        log.error("%s", exc)
        return 3
    except ConfigError as exc:  # a config value only checkable once its inputs are read (e.g. a lexicon file)
        log.error("error: %s", exc)
        return 2
    finally:
        mdist.cleanup()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print("usage: python -m mmpt_lite.train.main CONFIG.yaml [--set key=value ...]", file=sys.stderr)
        return 2
    overrides = [a for i, a in enumerate(argv[1:]) if argv[i] == "--set"]
    try:
        cfg = load_config(argv[0], overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return run(cfg, Path(argv[0]))


if __name__ == "__main__":
    sys.exit(main())
