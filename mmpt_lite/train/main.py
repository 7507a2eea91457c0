"""Training entry point: ``python -m mmpt_lite.train.main RESOLVED_CONFIG.yaml`` (one rank).

locallaunch.py runs this in-process (local_single) or under torchrun (local_small/local_big/slurm).
``train.task`` picks the objective (``mmpt_lite.train.tasks``); the trainer and loop are shared.
"""

from __future__ import annotations

from mmpt_lite import lifetime  # stdlib only, so it is in place before the slow imports below

if __name__ == "__main__":  # a rank process, before the seconds it spends importing torch:
    lifetime.defer_stop_signals()  # keep a stop signal that arrives meanwhile
    lifetime.start_orphan_watchdog()  # and die with the launcher even then (e.g. killed during start-up)

import json  # noqa: E402
import logging
import os
import sys
from pathlib import Path

import torch

from mmpt_lite import distributed as mdist
from mmpt_lite.checkpoint import CheckpointFormatError, CheckpointWriteError
from mmpt_lite.config import ConfigError, RunConfig, load_config, resolve_path, save_config
from mmpt_lite.data.loader import TrainLoader
from mmpt_lite.fileio import FileIntegrityError
from mmpt_lite.train.logging import setup_logging
from mmpt_lite.train.preemption import PREEMPTED_EXIT, STOP_FILE, Preempted, StopRequests, clear_marker
from mmpt_lite.train.tasks import get_task
from mmpt_lite.train.trainer import NonFiniteLossError, Trainer

log = logging.getLogger("mmpt_lite")


def pick_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", mdist.env_dist_info().local_rank)
    return torch.device("cpu")


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


def run(cfg: RunConfig) -> int:
    out_dir = resolve_path(cfg.train.output_dir)
    stop = StopRequests(out_dir / STOP_FILE)  # before the process group: a signal in start-up is acted on at step one
    device = pick_device(cfg.train.device)
    info = mdist.init_distributed(device)
    setup_logging(info.rank)
    try:
        task = get_task(cfg.train.task)
        # Rank 0 builds anything missing (corpus, shards, word vectors); the others wait, then resolve.
        prepared = task.prepare(cfg, build=True) if info.is_main else None
        mdist.barrier()
        if prepared is None:
            prepared = task.prepare(cfg, build=False)
        cfg = prepared.cfg
        log.info("mmpt_lite run | task: %s | data: %s (%d videos, shards %s) | model: %s | ranks: %d on %s",
                 cfg.train.task, prepared.name, prepared.num_videos, prepared.shard_root, task.describe(cfg),
                 info.world_size, device)
        if info.is_main:
            save_config(cfg, out_dir / "config.yaml")

        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        parts = task.build(cfg, prepared, device)
        loader_options = dict(batch_size=cfg.data.batch_size, rank=info.rank, world_size=info.world_size,
                              seed=cfg.train.seed, num_workers=cfg.data.num_workers,
                              pin_memory=device.type == "cuda", plan_provider=parts.plan_provider)
        if cfg.data.loader == "dali":   # imported here: DALI is an optional extra
            from mmpt_lite.data.dali import DaliTrainLoader
            loader = DaliTrainLoader(parts.dataset, device=device, **loader_options)
        else:
            loader = TrainLoader(parts.dataset, **loader_options)
        trainer = Trainer(cfg, model=parts.model, task=parts.task, loader=loader, device=device, out_dir=out_dir,
                          eval_fn=parts.eval_fn, flops_per_video=parts.flops_per_video, stop=stop)
        resumed = trainer.maybe_resume()
        if info.is_main:
            clear_marker(out_dir, lifetime.PROCESS_STARTED)  # this run continues from wherever a stop left it
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
            if hasattr(task, "final_table"):  # the task's own summary (e.g. classification accuracy)
                text = task.final_table(init, final)
                if text:
                    print(text, flush=True)
                    (out_dir / "final_eval.txt").write_text(text + "\n")
            else:
                print_final_table(init, final, out_dir)
            if final is not None:
                (out_dir / "eval_final.json").write_text(json.dumps(final))
        return 0
    except Preempted:
        return PREEMPTED_EXIT
    except (CheckpointFormatError, CheckpointWriteError, FileIntegrityError) as exc:
        # a damaged shard or checkpoint, or a full disk while saving: the one line says which file and what to do
        log.error("error: %s", exc)
        return 1
    except NonFiniteLossError as exc:
        log.error("%s", exc)
        return 3
    except ConfigError as exc:  # a value only checkable once its inputs are read (e.g. a lexicon file), or train.task
        log.error("error: %s", exc)
        return 2
    finally:
        stop.restore()
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
    # A rank of torchrun / srun: die with the launcher, and keep any resumed run from racing this one.
    out_dir = resolve_path(cfg.train.output_dir)
    lifetime.hold_rank_lock(out_dir)
    owner = None
    if mdist.env_dist_info().is_main and os.environ.get(lifetime.LOCK_HELD_ENV) != str(out_dir):
        try:  # started without the launcher (torchrun or srun by hand): rank 0 owns the folder
            owner = lifetime.RunLock(out_dir).acquire()
        except lifetime.RunFolderBusy as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    try:
        status = run(cfg)
    finally:
        if owner is not None:
            owner.release()
    # A stopped rank exits 0 so that torchrun ends without reporting a failure; preempted.json, which the
    # launcher and the sbatch script read, says that the run stopped early.
    return 0 if status == PREEMPTED_EXIT and "RANK" in os.environ else status


if __name__ == "__main__":
    sys.exit(main())
