#!/usr/bin/env python
"""NORTON against MIL-NCE, and UMT against masked pretraining as the start of MIL-NCE, at equal budgets, over
seeds, each run timed as a whole (launcher start to exit).

Part ``loss``: ``projects/norton_cpu.yaml`` (NORTON) and the same file with ``loss.name=milnce`` -- the same
model, batches (videos x consecutive clips), steps and seed; only the objective differs. Evaluated by zero-shot
clip retrieval (MSR-VTT- and YouCook2-format R@1) and NORTON's video-paragraph retrieval on the YouCook2-format
set (caption average, DTW, OTAM R@1).

Part ``init``: a UMT stage (``projects/umt_cpu.yaml``, its teacher the masked stage of ``--pretrain``) against
that masked stage as the start of the same short MIL-NCE run (the main job's contrastive settings without mined
batches, ``--contrastive_steps``); evaluated by MSR-VTT- and YouCook2-format R@1 and the HMDB-format probe.
The stage wall times are printed beside the results.

  python locallaunch.py projects/how2_pretrain.yaml --jobtype local_small     # the masked stage (teacher, start)
  python benchmarks/objectives_arms.py --pretrain runs/how2_pretrain --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(cmd: list[str], log: Path) -> float:
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(log, "w") as f:
        code = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=dict(os.environ)).returncode
    if code != 0:
        raise SystemExit(f"exit {code}: {' '.join(cmd)} (see {log})")
    return time.perf_counter() - started


def launch(config: str, out: Path, jobtype: str, overrides: list[str]) -> float:
    cmd = [sys.executable, "locallaunch.py", config, "--jobtype", jobtype, "--set", f"train.output_dir={out}"]
    for override in overrides:
        cmd += ["--set", override]
    return timed(cmd, out.with_suffix(".log"))


def evaluate(task: str, run: Path, extra: list[str] | None = None) -> dict:
    """One eval script on ``run``; its JSON record of the checkpoint."""
    out = run.with_name(f"{run.name}_{task}.json")
    timed([sys.executable, f"eval/eval_{task}.py", "--pretrain_cnn_path", str(run), "--output", str(out), "--quiet",
           *(extra or [])], out.with_suffix(".log"))
    return json.loads(out.read_text())["models"]["checkpoint"]


def loss_part(args, out: Path) -> list[dict]:
    rows = []
    for seed in args.seeds:
        for name, overrides in (("MIL-NCE", ["loss.name=milnce"]), ("NORTON", [])):
            run = out / f"{name.lower().replace('-', '')}_seed{seed}"
            seconds = launch("projects/norton_cpu.yaml", run, args.jobtype, [f"train.seed={seed}", *overrides])
            msrvtt = evaluate("msrvtt", run)
            youcook = evaluate("youcook", run)
            paragraph = evaluate("youcook_paragraph", run)
            rows.append({"arm": name, "seed": seed, "seconds": round(seconds, 1), "msrvtt_r1": msrvtt["metrics"]["R@1"],
                         "youcook_r1": youcook["metrics"]["R@1"],
                         **{f"paragraph_{m}_r1": v["R@1"] for m, v in paragraph["metrics"].items() if v}})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def init_part(args, out: Path) -> tuple[list[dict], float]:
    masked = Path(args.pretrain) / "masked"
    umt = out / "umt_stage"
    umt_seconds = launch("projects/umt_cpu.yaml", umt, "local_single", [f"umt.teacher={masked.resolve()}"])
    contrastive = ["stages.order=[contrastive]", f"stages.contrastive.train.max_steps={args.contrastive_steps}",
                   "stages.contrastive.retri.enabled=false", "stages.contrastive.train.ckpt_every=100"]
    rows = []
    for seed in args.seeds:
        for name, start in (("masked stage", masked), ("UMT stage", umt)):
            run = out / f"milnce_from_{name.split()[0].lower()}_seed{seed}"
            seconds = launch("projects/how2_pretrain.yaml", run, "local_small",
                             [*contrastive, f"train.seed={seed}", f"model.video.init_from={start.resolve()}"])
            stage = run / "contrastive"
            rows.append({"arm": f"MIL-NCE from {name}", "seed": seed, "seconds": round(seconds, 1),
                         "msrvtt_r1": evaluate("msrvtt", stage)["metrics"]["R@1"],
                         "youcook_r1": evaluate("youcook", stage)["metrics"]["R@1"],
                         "hmdb_top1": evaluate("hmdb", stage)["top1_mean"]})
            print(json.dumps(rows[-1]), flush=True)
    return rows, umt_seconds


def table(rows: list[dict], keys: list[str]) -> str:
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    lines = ["| arm | " + " | ".join(keys) + " | wall s per run |", "|---" * (len(keys) + 2) + "|"]
    for arm in arms:
        mine = [r for r in rows if r["arm"] == arm]
        cells = [" / ".join(f"{r[k]:.2f}" for r in mine) + f" (mean {statistics.mean(r[k] for r in mine):.2f})"
                 for k in keys]
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {statistics.mean(r['seconds'] for r in mine):.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pretrain", default="runs/how2_pretrain", help="a staged main-job folder (its masked/ stage)")
    p.add_argument("--parts", nargs="+", default=["loss", "init"], choices=["loss", "init"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--jobtype", default="local_small", help="of the loss part's runs")
    p.add_argument("--contrastive_steps", type=int, default=200)
    p.add_argument("--out", default="runs/objectives")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    result = {}
    if "loss" in args.parts:
        rows = loss_part(args, out / "loss")
        result["loss"] = rows
        print("\n" + table(rows, [k for k in rows[0] if k.endswith("_r1")]), flush=True)
    if "init" in args.parts:
        rows, umt_seconds = init_part(args, out / "init")
        result["init"], result["umt_stage_seconds"] = rows, umt_seconds
        print(f"\nUMT stage: {umt_seconds:.0f} s (projects/umt_cpu.yaml)\n" + table(rows, ["msrvtt_r1", "youcook_r1",
                                                                                       "hmdb_top1"]), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "objectives.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
