"""Generate the how2-synth corpus (see docs/data.md).

    python scripts/make_synthetic.py --out data/how2-synth --seed 0 --size default --workers 2

Reuses a complete corpus already at --out with the same seed and size; exits 1 with a one-line
message on errors (ffmpeg missing, --out holding something else, ...).
"""

from __future__ import annotations

import argparse
import sys

from mmpt_lite.synth.corpus import SIZES, TRAIN_HUES, generate_corpus


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder (created; must be absent, empty or a corpus)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", choices=sorted(SIZES), default="default")
    parser.add_argument("--workers", type=int, default=2, help="parallel render processes (<= 1: in-process)")
    parser.add_argument("--train_hue", choices=TRAIN_HUES, default="task",
                        help="training videos' background hue: their task's (default) or one random hue each")
    parser.add_argument("--train_videos", type=int, default=0,
                        help="number of training videos (default 0: the size preset's)")
    args = parser.parse_args(argv)
    try:
        summary = generate_corpus(args.out, seed=args.seed, size=args.size, workers=args.workers,
                                  train_hue=args.train_hue, train_videos=args.train_videos)
    except (OSError, RuntimeError, ValueError) as error:  # FileExistsError is an OSError
        print(f"make_synthetic: {error}", file=sys.stderr)
        return 1
    verb = "reused" if summary["reused"] else "generated"
    print(f"how2-synth {verb}: {summary['out_dir']} (seed {summary['seed']}, size {summary['size']}, "
          f"train_hue {summary['train_hue']}, {summary['files']} files, {summary['bytes'] / 1e6:.1f} MB, {summary['seconds']:.1f} s)")
    print("counts: " + ", ".join(f"{split}={n}" for split, n in summary["counts"].items()))
    for kind, pairs in summary["heldout"].items():
        print(f"held out of training ({kind}): " + ", ".join("/".join(pair) for pair in pairs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
