"""Generate the how2-synth corpus (see docs/data.md).

    python scripts/make_synthetic.py --out data/how2-synth --seed 0 --size default --workers 2
    # what the main job reads, drawn at the size and rate it stores (~1 min instead of ~14):
    python scripts/make_synthetic.py --out data/how2-synth-rh3k-s64f5 --train_hue random --train_videos 3000 \
        --short_side 64 --fps 5 --sets train,msrvtt,youcook2,hmdb51

Reuses a complete corpus already at --out made with the same settings; exits 1 with a one-line
message on errors (ffmpeg missing, --out holding something else, ...). Progress lines every ~10 s.
"""

from __future__ import annotations

import argparse
import logging
import sys

from mmpt_lite.synth.corpus import SETS, SIZES, TRAIN_HUES, generate_corpus


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
    parser.add_argument("--short_side", type=int, default=0,
                        help="draw every video with this (even) short side in px (default 0: native 240)")
    parser.add_argument("--fps", type=int, default=0, help="render at this frame rate (default 0: native 12-30)")
    parser.add_argument("--sets", default="all",
                        help=f"'all' (default) or a comma-separated subset of {','.join(SETS)} to render")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stdout)  # a handler flushes every line, so a log file follows along
    sets = args.sets if args.sets == "all" else [name.strip() for name in args.sets.split(",") if name.strip()]
    try:
        summary = generate_corpus(args.out, seed=args.seed, size=args.size, workers=args.workers,
                                  train_hue=args.train_hue, train_videos=args.train_videos,
                                  short_side=args.short_side, fps=args.fps, sets=sets)
    except (OSError, RuntimeError, ValueError) as error:  # FileExistsError is an OSError
        print(f"make_synthetic: {error}", file=sys.stderr)
        return 1
    verb = "reused" if summary["reused"] else "generated"
    print(f"how2-synth {verb}: {summary['out_dir']} (seed {summary['seed']}, size {summary['size']}, "
          f"train_hue {summary['train_hue']}, short_side {summary['short_side'] or 'native'}, "
          f"fps {summary['fps'] or 'native'}, sets {'all' if tuple(summary['sets']) == SETS else ','.join(summary['sets'])}, {summary['files']} files, {summary['bytes'] / 1e6:.1f} MB, {summary['seconds']:.1f} s)")
    print("counts: " + ", ".join(f"{split}={n}" for split, n in summary["counts"].items()))
    for kind, pairs in summary["heldout"].items():
        print(f"held out of training ({kind}): " + ", ".join("/".join(pair) for pair in pairs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
