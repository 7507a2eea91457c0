"""Staged recipes: ``stages.order`` runs one config as a sequence of runs (masked -> contrastive -> report).

Each training stage is an ordinary run of :func:`mmpt_lite.config.stage_config` in
``<train.output_dir>/<stage>/``, launched by the launcher's single-run path for the job type (passed in as
``run_stage``: in-process for local_single, torchrun for local_small/local_big). A stage is finished when its
folder holds ``stage_done.json``, written atomically after the run returned 0 (so after its final
checkpoint). Re-running the command skips finished stages and resumes an unfinished one from its latest
checkpoint (``train.resume: auto``), so a kill anywhere followed by a re-run ends with the weights of an
uninterrupted run. The first failing stage stops the pipeline with its exit status.

The ``report`` stage evaluates the last training stage's final checkpoint and the random initialisation of
the same architecture with the eval entry points (``mmpt_lite.evaluation.cli``) on the MSR-VTT-, YouCook2-
and HMDB-format sets under ``data.root`` with the run's ``eval`` protocol, prints one table and writes
``report/report.json`` and ``report/report.png``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

from mmpt_lite.config import (
    STAGE_TASKS,
    ConfigError,
    RunConfig,
    dump_config,
    load_config,
    resolve_path,
    save_config,
    stage_config,
)
from mmpt_lite.fileio import atomic_write_text

DONE_FILE = "stage_done.json"
# (evaluator, table label): the report's evaluations, in table order
REPORT_TASKS = (("msrvtt", "MSR-VTT-format zero-shot"), ("youcook", "YouCook2-format zero-shot"),
                ("hmdb", "HMDB-format linear probe"))
RETRIEVAL_METRICS = ("R@1", "R@5", "R@10", "MedR")

# run_stage(cfg, jobtype, dryrun) -> exit status: the launcher's single-run path
StageRunner = Callable[[RunConfig, str, bool], int]


def plan(cfg: RunConfig, overrides: list[str]) -> list[tuple[str, RunConfig]]:
    """(stage, its run config) in order; every stage's config is built and validated (ConfigError)."""
    return [(name, stage_config(cfg, name, overrides)) for name in cfg.stages.order]


def config_digest(cfg: RunConfig) -> str:
    return hashlib.sha256(dump_config(cfg).encode()).hexdigest()[:16]


def finished(stage_dir: Path) -> dict | None:
    """The completion record of a finished stage, or None."""
    path = stage_dir / DONE_FILE
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def mark_finished(stage_dir: Path, stage: str, cfg: RunConfig, **extra) -> None:
    record = {"stage": stage, "config_sha256": config_digest(cfg), "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
              **extra}
    atomic_write_text(stage_dir / DONE_FILE, json.dumps(record, indent=1) + "\n", fsync=True)


def _last_step(stage_dir: Path) -> dict:
    from mmpt_lite.checkpoint import latest_checkpoint
    step_dir = latest_checkpoint(stage_dir)
    if step_dir is None:
        return {}
    meta = json.loads((step_dir / "meta.json").read_text())
    return {"step": meta.get("step"), "checkpoint": str(step_dir), "model_sha256": meta.get("model_sha256")}


def _inputs_note(cfg: RunConfig, corpus_existed: bool, started: float) -> str:
    """Whether the corpus and shards the first stage prepared were made now or reused."""
    root = resolve_path(cfg.data.root)
    corpus = f"corpus {root}: {'reused' if corpus_existed else 'generated'}"
    shard_root = resolve_path(cfg.data.shard_root) if cfg.data.shard_root else None
    if shard_root is None or not shard_root.is_dir():
        return corpus
    newest = max((p.stat().st_mtime for p in shard_root.iterdir()), default=0.0)
    return f"{corpus}; shards {shard_root}: {'built' if newest >= started else 'reused'}"


# --------------------------------------------------------------------------- report
def report_argv(run_dir: Path, config_path: Path, out_dir: Path, task: str) -> list[str]:
    """The eval command line of one report task (what ``eval/eval_<task>.py`` would be given)."""
    return ["--pretrain_cnn_path", str(run_dir), "--compare_random_init", "--config", str(config_path),
            "--output", str(out_dir / f"{task}.json"), "--plot", str(out_dir / f"{task}.png"),
            "--no_cache", "--quiet"]


def _rows(task: str, label: str, result: dict) -> list[dict]:
    models = result["models"]
    trained, random_init = models["checkpoint"], models["random init"]
    if task == "hmdb":
        return [{"task": label, "metric": "top-1 (%)", "trained": trained["top1_mean"],
                 "random_init": random_init["top1_mean"], "chance": 100.0 / trained["num_classes"]}]
    n = trained["num_videos"]
    chance = {"R@1": 100.0 / n, "R@5": min(100.0, 500.0 / n), "R@10": min(100.0, 1000.0 / n), "MedR": (n + 1) / 2}
    return [{"task": label, "metric": m + (" (%)" if m != "MedR" else ""), "trained": trained["metrics"][m],
             "random_init": random_init["metrics"][m], "chance": chance[m]} for m in RETRIEVAL_METRICS]


def format_report(rows: list[dict], heading: str) -> str:
    width = max(len(f"{r['task']} {r['metric']}") for r in rows) + 2
    lines = [heading, f"{'task / metric':<{width}}{'trained':>10}{'random init':>13}{'chance':>10}"]
    for r in rows:
        lines.append(f"{r['task'] + ' ' + r['metric']:<{width}}{r['trained']:>10.2f}{r['random_init']:>13.2f}"
                     f"{r['chance']:>10.2f}")
    return "\n".join(lines)


def plot_report(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    percent = [r for r in rows if r["metric"].endswith("(%)")]
    ranks = [r for r in rows if not r["metric"].endswith("(%)")]
    fig, axes = plt.subplots(1, 2 if ranks else 1, figsize=(12 if ranks else 9, 4.5), squeeze=False,
                             gridspec_kw={"width_ratios": [3, 1]} if ranks else None)
    for ax, group, ylabel in ((axes[0][0], percent, "% (higher is better)"),
                              *(((axes[0][1], ranks, "median rank (lower is better)"),) if ranks else ())):
        x = range(len(group))
        for i, (key, name) in enumerate((("trained", "trained"), ("random_init", "random init"), ("chance", "chance"))):
            ax.bar([j + (i - 1) * 0.27 for j in x], [r[key] for r in group], width=0.27, label=name)
        ax.set_xticks(list(x))
        ax.set_xticklabels([f"{r['task'].split('-format')[0]}\n{r['metric'].replace(' (%)', '')}" for r in group],
                           fontsize=8)
        ax.set_ylabel(ylabel)
    axes[0][0].legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def run_report(report_cfg: RunConfig, trained_stage: str, run_dir: Path) -> int:
    """Evaluate ``run_dir``'s final checkpoint and its random init; print the table, write JSON and PNG."""
    from mmpt_lite.evaluation import cli

    out_dir = resolve_path(report_cfg.train.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config_path = out_dir / "config.yaml"
    save_config(report_cfg, config_path)
    masked_only = STAGE_TASKS[trained_stage] == "mae"  # no text tower: the retrieval tasks do not apply
    rows, details = [], {}
    for task, label in REPORT_TASKS:
        if masked_only and task != "hmdb":
            print(f"report: {label} skipped ({trained_stage} stage has no text tower)", flush=True)
            continue
        argv = report_argv(run_dir, config_path, out_dir, task)
        print(f"report: {label}: eval_{task}.py {shlex.join(argv)}", flush=True)
        with open(out_dir / f"{task}.log", "w") as log, contextlib.redirect_stdout(log):
            status = cli.main(task, argv)
        if status:
            print(f"report: eval_{task}.py failed with status {status} (see {out_dir / f'{task}.log'})",
                  file=sys.stderr)
            return status
        result = json.loads((out_dir / f"{task}.json").read_text())
        rows += _rows(task, label, result)
        details[task] = {"json": str(out_dir / f"{task}.json"), "protocol": result["protocol"],
                         "checkpoint": result["models"]["checkpoint"]["checkpoint"]}
    heading = (f"{trained_stage} stage ({run_dir}) vs random init of the same architecture, "
               f"eval sets under {resolve_path(report_cfg.data.root)}")
    table = format_report(rows, heading)
    print(table, flush=True)
    atomic_write_text(out_dir / "report.txt", table + "\n")
    report = {"trained_stage": trained_stage, "run": str(run_dir), "rows": rows, "details": details}
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=1, allow_nan=False, default=_finite) + "\n")
    plot_report(rows, out_dir / "report.png", heading)
    print(f"wrote {out_dir / 'report.json'} and {out_dir / 'report.png'}", flush=True)
    return 0


def _finite(value):
    return None if isinstance(value, float) and not math.isfinite(value) else str(value)


# --------------------------------------------------------------------------- the pipeline
def print_estimate(stages: list[tuple[str, RunConfig]], ranks: int) -> float | None:
    """Print the expected time of the stages still to run (``mmpt_lite.estimate``); None on a GPU machine,
    where the CPU cost model does not apply."""
    import torch

    from mmpt_lite import estimate
    if torch.cuda.is_available():
        return None
    todo = [(name, cfg) for name, cfg in stages
            if name == "report" or finished(resolve_path(cfg.train.output_dir)) is None]
    phases, gflops = estimate.estimate(todo, ranks)
    print(estimate.describe(phases, gflops), flush=True)
    return sum(p.seconds for p in phases)


def run_pipeline(cfg: RunConfig, overrides: list[str], *, jobtype: str, dryrun: bool, run_stage: StageRunner,
                 ranks: int = 1) -> int:
    """Run ``cfg.stages.order``; returns 0 or the first failing stage's exit status (2: a config error).
    ``ranks``: processes per training stage (for the expected-time line)."""
    try:
        stages = plan(cfg, overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    root = resolve_path(cfg.train.output_dir)
    names = [name for name, _ in stages]
    print(f"mmpt_lite pipeline: stages {' -> '.join(names)} in {root}", flush=True)
    expected = None
    if not dryrun:
        expected = print_estimate(stages, ranks)
        save_config(cfg, root / "config.yaml")
    started, corpus_existed, prepared_once = time.time(), resolve_path(cfg.data.root).is_dir(), False
    last_trained: tuple[str, Path] | None = None
    for i, (name, stage_cfg) in enumerate(stages, 1):
        stage_dir = resolve_path(stage_cfg.train.output_dir)
        header = f"# stage {i}/{len(stages)}: {name} -> {stage_dir}"
        if name == "report":
            assert last_trained is not None  # StagesConfig checks that report follows a training stage
            if dryrun:
                print(f"{header}\n# in the launcher process: the eval entry points, then one table")
                for task, _ in REPORT_TASKS:
                    print(f"eval/eval_{task}.py {shlex.join(report_argv(last_trained[1], stage_dir / 'config.yaml', stage_dir, task))}")
                print(f"# resolved config (would be written to {stage_dir / 'config.yaml'})\n{dump_config(stage_cfg)}")
                continue
            done = finished(stage_dir)
            if done is not None and done.get("trained_sha256") == _last_step(last_trained[1]).get("model_sha256"):
                print(f"stage {name}: skipped (finished {done['finished_at']}: {stage_dir / 'report.txt'})", flush=True)
                print((stage_dir / "report.txt").read_text(), end="", flush=True)
                continue
            print(f"stage {name}: evaluating {last_trained[0]} in {stage_dir}", flush=True)
            status = run_report(stage_cfg, *last_trained)
            if status:
                return status
            mark_finished(stage_dir, name, stage_cfg, trained_sha256=_last_step(last_trained[1]).get("model_sha256"))
            continue

        last_trained = (name, stage_dir)
        if dryrun:
            print(header, flush=True)
            status = run_stage(stage_cfg, jobtype, True)
            if status:
                return status
            continue
        done = finished(stage_dir)
        if done is not None:
            note = ""
            if done.get("config_sha256") != config_digest(stage_cfg):
                note = " (its settings differ from this config's; delete the folder to run it again)"
            print(f"stage {name}: skipped (finished {done['finished_at']} at step {done.get('step')}){note}", flush=True)
            continue
        resuming = _last_step(stage_dir)
        print(f"stage {i}/{len(stages)}: {name}" + (f" (resuming from step {resuming['step']})" if resuming else ""),
              flush=True)
        status = run_stage(stage_cfg, jobtype, False)
        if not prepared_once:
            prepared_once = True
            saved = stage_dir / "config.yaml"
            if saved.is_file():
                print(f"stage {name}: inputs: {_inputs_note(load_config(saved), corpus_existed, started)}", flush=True)
        if status:
            print(f"stage {name}: failed with exit status {status}; the pipeline stops here", file=sys.stderr)
            return status
        last = _last_step(stage_dir)
        if last.get("step") != stage_cfg.train.max_steps and stage_cfg.train.epochs == 0:
            print(f"stage {name}: finished without a checkpoint at step {stage_cfg.train.max_steps}", file=sys.stderr)
            return 1
        mark_finished(stage_dir, name, stage_cfg, **last)
        print(f"stage {name}: finished at step {last.get('step')}", flush=True)
    if not dryrun:
        took = time.time() - started
        print(f"mmpt_lite pipeline: done in {took / 60:.1f} min"
              + (f" (expected {expected / 60:.1f} min)" if expected else ""), flush=True)
    return 0
