"""Shard a HowTo100M-format corpus for fast mmap'ed loading.

Examples:
  # frames decoded once at 5 fps, short side 128, JPEG (the CPU demo); --short_side 256 for real runs
  python scripts/shard_howto.py --csv train.csv --video_root videos/ --caption_root captions/ --out shards/ \
      --workers 8
  # the same frames decoded by one ffmpeg process per video instead of PyAV
  python scripts/shard_howto.py --csv train.csv --video_root videos/ --out shards/ --decoder ffmpeg
  # re-hash every shard file against the manifest (exit 1 and name the file on any difference)
  python scripts/shard_howto.py --verify --out shards/

A rerun with the same arguments skips the shards already finished and verified. See docs/shards.md.
"""

import argparse
import sys

from mmpt_lite.data.decoders import DECODERS
from mmpt_lite.data.shard_build import build_video_shards
from mmpt_lite.data.shards import STORAGE_KINDS, verify_shards


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (holds manifest.json)")
    parser.add_argument("--verify", action="store_true", help="only verify the shards in --out")
    parser.add_argument("--csv", help="video list with a video_path column")
    parser.add_argument("--video_root", default="", help="folder the video_path entries are relative to")
    parser.add_argument("--caption_root", help="folder of <video_id>.csv caption files (start,end,text)")
    parser.add_argument("--decoder", choices=tuple(DECODERS), default="pyav", help="video decoder (data.decoder)")
    parser.add_argument("--storage", choices=STORAGE_KINDS, default="jpeg")
    parser.add_argument("--fps", type=float, default=5.0, help="frames stored per second of video")
    parser.add_argument("--short_side", type=int, default=128, help="stored short side in pixels (0: keep)")
    parser.add_argument("--jpeg_quality", type=int, default=90)
    parser.add_argument("--gop", type=int, default=16, help="h264 storage: keyframe interval in stored frames")
    parser.add_argument("--videos_per_shard", type=int, default=4096)
    parser.add_argument("--workers", type=int, default=1, help="processes building shards in parallel")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if not args.verify and not args.csv:
        parser.error("give --csv or --verify")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.verify:
        problems = verify_shards(args.out)
        for problem in problems:
            print(f"FAILED {problem}", file=sys.stderr)
        print(f"verify {args.out}: " + (f"{len(problems)} problem(s)" if problems else "all shard files intact"))
        return 1 if problems else 0
    try:   # a missing or malformed list, bad parameters, another build in --out: one line, status 2
        report = build_video_shards(args.csv, args.video_root, args.out, caption_root=args.caption_root,
                                    storage=args.storage, fps=args.fps, short_side=args.short_side or None,
                                    jpeg_quality=args.jpeg_quality, gop=args.gop,
                                    videos_per_shard=args.videos_per_shard, workers=args.workers,
                                    progress=not args.quiet, decoder=args.decoder)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"shard_howto.py: error: {err}", file=sys.stderr)
        return 2
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
