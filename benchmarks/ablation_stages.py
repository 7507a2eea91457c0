#!/usr/bin/env python
"""What each stage of the main job buys: {random init, masked-pretraining init} x {random, mined batches},
at equal training wall time, over seeds.

Every arm is the main job's pipeline (``projects/how2_pretrain.yaml``, ``--jobtype local_small`` unless
``--jobtype`` says otherwise) with stage overrides; the corpus and shards are shared. The time budget ``--budget_s`` is split by the rates
measured on this machine (``--masked_steps_per_s``, ``--contrastive_steps_per_s``, ``--mining_pass_s``):

  mae + mined     masked for ``--masked_share`` of the budget, then MIL-NCE on mined batches (the recipe)
  mae + random    the same masked stage, then MIL-NCE on shuffled batches (no embedding passes: more steps)
  random + mined  MIL-NCE on mined batches for the whole budget
  random + random MIL-NCE on shuffled batches for the whole budget

Each arm's training is timed as a whole (launcher start to exit) and printed beside its budget, so the
equal-time premise is checked, not assumed. Then the trained model is evaluated (MSR-VTT- and
YouCook2-format zero-shot retrieval, HMDB-format linear probe; the run's own protocol). Results go to
``<out>/ablation.json`` and a markdown table on stdout.

  python benchmarks/ablation_stages.py --budget_s 300 --masked_share 0.25 --masked_steps_per_s 1.95 \
      --contrastive_steps_per_s 1.54 --mining_pass_s 23 --set stages.contrastive.retri.start_epoch=1

The rates are the ones a short run of each stage logs on the machine (``videos_per_s`` / global batch; a
mining pass's ``embed_s`` in ``retri.jsonl``). On GPUs, at scale (real HowTo100M shards, ViT-B/16):

  python benchmarks/ablation_stages.py --jobtype local_big --budget_s 14400 --masked_share 0.25 \
      --set data.root=/data/howto100m --set data.synthetic.enabled=false --set data.shard_root=/data/how2_shards \
      --set model.video.preset=vit_b --set data.video_size=224 --set data.num_frames=16 \
      --num_videos 1200000 --masked_steps_per_s ... --contrastive_steps_per_s ... --mining_pass_s ...
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from mmpt_lite.config import load_config, resolve_path, stage_config
from mmpt_lite.estimate import embedding_epochs
from mmpt_lite.evaluation import cli
from mmpt_lite.launch import local_ranks

ARMS = (("mae", "mined"), ("mae", "random"), ("random", "mined"), ("random", "random"))


def contrastive_steps(seconds: float, mined: bool, rate: float, pass_s: float, cfg, world: int, videos: int) -> int:
    """The most MIL-NCE steps (rate steps/s, plus ``pass_s`` per mining embedding pass over ``videos``) that
    fit in ``seconds``."""
    steps = max(1, int(seconds * rate))
    if not mined:
        return steps
    per_epoch = math.ceil(videos / (cfg.data.batch_size * world))
    while steps > 1:
        cfg.train.max_steps = steps
        if steps / rate + embedding_epochs(cfg, per_epoch) * pass_s <= seconds:
            return steps
        steps -= 1
    return steps


def evaluate(run: Path, config: Path, out: Path) -> dict:
    scores = {}
    for task in ("msrvtt", "youcook", "hmdb"):
        argv = ["--pretrain_cnn_path", str(run), "--config", str(config), "--output", str(out / f"{task}.json"),
                "--no_cache", "--quiet"]
        with contextlib.redirect_stdout(io.StringIO()):
            status = cli.main(task, argv)
        if status:
            raise SystemExit(f"eval_{task}.py failed on {run} with status {status}")
        result = json.loads((out / f"{task}.json").read_text())["models"]["checkpoint"]
        if task == "hmdb":
            scores["hmdb_top1"] = result["top1_mean"]
        else:
            scores.update({f"{task}_{m}": result["metrics"][m] for m in ("R@1", "R@5", "R@10", "MedR")})
    return scores


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="projects/how2_pretrain.yaml")
    p.add_argument("--budget_s", type=float, default=300.0, help="training wall time per arm")
    p.add_argument("--masked_share", type=float, default=0.3, help="share of the budget for masked pretraining")
    p.add_argument("--masked_steps_per_s", type=float, required=True)
    p.add_argument("--contrastive_steps_per_s", type=float, required=True)
    p.add_argument("--mining_pass_s", type=float, required=True, help="seconds per corpus embedding pass")
    p.add_argument("--num_videos", type=int, default=0, help="training videos (default: the synthetic corpus's)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--arms", nargs="+", default=[f"{i}+{b}" for i, b in ARMS])
    p.add_argument("--out", default="runs/ablation")
    p.add_argument("--jobtype", default="local_small", choices=["local_single", "local_small", "local_big"])
    p.add_argument("--set", dest="overrides", action="append", default=[], help="extra --set for every arm")
    args = p.parse_args()
    base = load_config(args.config, args.overrides)
    world = local_ranks(base, args.jobtype)
    out_root = resolve_path(args.out)
    out_root.mkdir(parents=True, exist_ok=True)
    rows = []
    for arm in args.arms:
        init, batches = arm.split("+")
        masked_steps = round(args.budget_s * args.masked_share * args.masked_steps_per_s) if init == "mae" else 0
        left = args.budget_s - masked_steps / args.masked_steps_per_s
        stage = stage_config(base, "contrastive", [*args.overrides, "retri.enabled=true"])
        steps = contrastive_steps(left, batches == "mined", args.contrastive_steps_per_s, args.mining_pass_s,
                                  stage, world, args.num_videos or base.data.synthetic.train_videos)
        for seed in args.seeds:
            run = out_root / f"{init}-init_{batches}-batches_seed{seed}"
            order = "[masked,contrastive]" if init == "mae" else "[contrastive]"
            sets = [*args.overrides, f"train.seed={seed}", f"train.output_dir={run}", f"stages.order={order}",
                    f"stages.contrastive.train.max_steps={steps}",
                    f"stages.contrastive.retri.enabled={'true' if batches == 'mined' else 'false'}"]
            if masked_steps:
                sets.append(f"stages.masked.train.max_steps={masked_steps}")
            cmd = [sys.executable, "locallaunch.py", args.config, "--jobtype", args.jobtype]
            for s in sets:
                cmd += ["--set", s]
            print(f"{arm} seed {seed}: masked {masked_steps} + contrastive {steps} steps", flush=True)
            start = time.time()
            with open(out_root / f"{run.name}.log", "w") as log:
                status = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         env={k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"})
            wall = time.time() - start
            if status:
                raise SystemExit(f"{arm} seed {seed} failed with status {status}: {out_root / f'{run.name}.log'}")
            scores = evaluate(run / "contrastive", run / "contrastive" / "config.yaml", run)
            rows.append({"arm": arm, "seed": seed, "masked_steps": masked_steps, "contrastive_steps": steps,
                         "wall_s": wall, **scores})
            print(json.dumps(rows[-1]), flush=True)
            (out_root / "ablation.json").write_text(json.dumps({"budget_s": args.budget_s, "rows": rows}, indent=1))
    print(table(rows, args.budget_s))


METRICS = [f"{t}_{m}" for t in ("msrvtt", "youcook") for m in ("R@1", "R@5", "R@10", "MedR")] + ["hmdb_top1"]


def _line(arm: str, seed: str, r: dict) -> str:
    retrieval = [" / ".join(f"{r[f'{t}_{m}']:.2f}" for m in ("R@1", "R@5", "R@10", "MedR")) for t in ("msrvtt", "youcook")]
    return (f"| {arm} | {seed} | {r['masked_steps']:.0f} + {r['contrastive_steps']:.0f} | {r['wall_s']:.0f} | "
            f"{retrieval[0]} | {retrieval[1]} | {r['hmdb_top1']:.2f} |")


def table(rows: list[dict], budget_s: float) -> str:
    """Markdown: one line per run, then each arm's mean over its seeds."""
    lines = [f"| arm (budget {budget_s:.0f} s) | seed | steps (masked + MIL-NCE) | wall s | MSR-VTT R@1 / R@5 / R@10 / "
             "MedR | YouCook2 R@1 / R@5 / R@10 / MedR | HMDB top-1 |", "|---|---|---|---:|---|---|---:|"]
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    for arm in arms:
        group = [r for r in rows if r["arm"] == arm]
        lines += [_line(arm, str(r["seed"]), r) for r in group]
        if len(group) > 1:
            mean = {k: statistics.mean(r[k] for r in group) for k in ["masked_steps", "contrastive_steps", "wall_s", *METRICS]}
            lines.append(_line(f"**{arm}**", "mean", mean))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
