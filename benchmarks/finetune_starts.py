#!/usr/bin/env python
"""What pretraining buys a fine-tuned classifier: classification fine-tuning on the synthetic SSv2-format set
from random init, from the main job's masked-pretraining stage and from its MIL-NCE video tower, at the same
budget (the same steps of the same network), over seeds.

Every arm is ``projects/finetune_ssv2_cpu.yaml`` (``--config``) with ``model.video.init_from`` set; each run is
timed as a whole (launcher start to exit) and evaluated by its own multi-view test on the validation list
(2 temporal views x 3 crops, softmax averaged). Results go to ``<out>/finetune_starts.json`` and a markdown
table on stdout, with the chance level.

  python locallaunch.py projects/how2_pretrain.yaml --jobtype local_small      # the pretrained stages
  python benchmarks/finetune_starts.py --pretrain runs/how2_pretrain --seeds 0 1

At scale (real SSv2, ViT-B/16 from a masked-pretraining run and a MIL-NCE run of the same preset):

  python benchmarks/finetune_starts.py --config projects/videomae_finetune_ssv2.yaml --jobtype local_big \
      --masked runs/videomae_pretrain --milnce runs/how2_vit_b --set data.root=/data
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


def run_arm(args, name: str, init_from: str, seed: int) -> dict:
    out = Path(args.out) / f"{name}_seed{seed}"
    cmd = [sys.executable, "locallaunch.py", args.config, "--jobtype", args.jobtype, "--set", f"train.seed={seed}",
           "--set", f"model.video.init_from={init_from}", "--set", f"train.output_dir={out}"]
    for override in args.overrides:
        cmd += ["--set", override]
    log = Path(args.out) / f"{name}_seed{seed}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(log, "w") as f:
        code = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=dict(os.environ)).returncode
    seconds = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"{name} seed {seed}: exit {code}, see {log}")
    final = json.loads((out / "eval_final.json").read_text())
    init_path = out / "eval_init.json"
    init = json.loads(init_path.read_text()) if init_path.is_file() else None
    keys = ("top1", "top5", "mean_class_accuracy", "num_evaluated", "num_listed", "num_classes", "chance_top1")
    return {"arm": name, "seed": seed, "init_from": init_from, "seconds": round(seconds, 1),
            **{k: final[k] for k in keys}, "random_init_top1": init["top1"] if init else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="projects/finetune_ssv2_cpu.yaml")
    p.add_argument("--pretrain", default="runs/how2_pretrain", help="a staged main-job folder (masked/, contrastive/)")
    p.add_argument("--masked", help="masked-pretraining run (default: <pretrain>/masked)")
    p.add_argument("--milnce", help="MIL-NCE run (default: <pretrain>/contrastive)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--jobtype", default="local_single")
    p.add_argument("--out", default="runs/finetune_starts")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    arms = {"random init": "", "masked stage": args.masked or f"{args.pretrain}/masked",
            "MIL-NCE tower": args.milnce or f"{args.pretrain}/contrastive"}
    for name, path in arms.items():
        if path and not (REPO / path).exists() and not Path(path).exists():
            raise SystemExit(f"{name}: {path} does not exist (run the main job first: python locallaunch.py "
                             "projects/how2_pretrain.yaml --jobtype local_small)")
    rows = []
    for seed in args.seeds:
        for name, path in arms.items():
            rows.append(run_arm(args, name.split()[0].lower().replace("-", ""), path, seed) | {"arm": name})
            print(json.dumps(rows[-1]), flush=True)
    chance = rows[0]["chance_top1"]
    print(f"\n{Path(args.config).name}: {rows[0]['num_evaluated']} of {rows[0]['num_listed']} validation videos, "
          f"{rows[0]['num_classes']} classes, chance top-1 {chance:.2f}%; seeds {args.seeds}\n")
    print("| start | top-1 (%) per seed | mean top-1 | mean top-5 | mean per-class | wall s per run |")
    print("|---|---|---|---|---|---|")
    for name in arms:
        mine = [r for r in rows if r["arm"] == name]
        top1 = " / ".join(f"{r['top1']:.2f}" for r in mine)
        mean = {k: statistics.mean(r[k] for r in mine) for k in ("top1", "top5", "mean_class_accuracy", "seconds")}
        print(f"| {name} | {top1} | {mean['top1']:.2f} | {mean['top5']:.2f} | {mean['mean_class_accuracy']:.2f} | "
              f"{mean['seconds']:.0f} |")
    (Path(args.out) / "finetune_starts.json").write_text(json.dumps({"config": args.config, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
