#!/usr/bin/env python
"""Throughput of the zero-shot evaluation's decode+embed path against MIL-NCE's ffmpeg-per-window loader.

Both paths produce the same MIL-NCE windows (linspace starts, ``fps`` sampling, centre square crop,
resize, zero-pad) and feed the same model, one core each (torch, PyAV and ffmpeg limited to one
thread). The baseline is MIL-NCE's way: an ``ffprobe`` process for the duration, then one ``ffmpeg``
process per window (``-ss start -t num_sec+0.1``, fps filter, crop, scale, raw RGB over a pipe).
Reported per path: videos/s (wall clock) and videos per CPU-second (own + child processes), the
per-core rate that stays meaningful on a shared machine.

  python benchmarks/bench_eval.py                               # synthetic MSR-VTT set, or generated clips
  python benchmarks/bench_eval.py --eval_video_root /data/msrvtt --num_videos 50 --video_size 224
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mmpt_lite.config import RunConfig, load_config, resolve_path
from mmpt_lite.evaluation.checkpoints import random_init_model
from mmpt_lite.evaluation.features import (
    RetrievalProtocol,
    VideoRequest,
    decode_retrieval_windows,
    extract_window_features,
)
from mmpt_lite.evaluation.windows import pad_or_trim, retrieval_window_starts
from mmpt_lite.evaluation.zeroshot import MsrvttRetrieval
from mmpt_lite.models.preprocess import VideoInput

REPO = Path(__file__).resolve().parents[1]


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (ffmpeg/ffprobe), user + system."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def milnce_ffmpeg_windows(path: str, protocol: RetrievalProtocol) -> np.ndarray:
    """MIL-NCE's test loader: ffprobe for the duration, one ffmpeg process per window -> uint8 [W, T, S, S, 3]."""
    probe = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", path],
                           capture_output=True, text=True, check=True)
    duration = float(probe.stdout.strip())
    size, num_seconds = protocol.video_size, protocol.num_frames / protocol.fps
    square = "crop='min(iw,ih)':'min(iw,ih)':'(iw-min(iw,ih))/2':'(ih-min(iw,ih))/2'"
    windows = []
    for start in retrieval_window_starts(0.0, duration, protocol.num_windows, protocol.num_frames, protocol.fps):
        command = ["ffmpeg", "-nostdin", "-loglevel", "error", "-threads", "1", "-ss", f"{start:.6f}",
                   "-t", f"{num_seconds + 0.1:.6f}", "-i", path, "-filter_threads", "1",
                   "-vf", f"fps=fps={protocol.fps:g},{square},scale={size}:{size}",
                   "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:"]
        raw = subprocess.run(command, capture_output=True, check=True).stdout
        windows.append(pad_or_trim(np.frombuffer(raw, np.uint8).reshape(-1, size, size, 3), protocol.num_frames))
    return np.stack(windows)


def embed_windows(model: torch.nn.Module, windows: list[np.ndarray]) -> None:
    """The embedding half of the evaluation for decoded videos ([W, T, S, S, 3] each), one batch."""
    batch = torch.from_numpy(np.stack(windows)).flatten(0, 1)
    model(video=VideoInput(model, torch.device("cpu"))(batch))


def timed(label: str, count: int, work) -> dict:
    wall, cpu = time.perf_counter(), cpu_seconds()
    work()
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    row = {"path": label, "videos": count, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
           "videos_per_s": round(count / wall, 3), "videos_per_cpu_s": round(count / cpu, 3)}
    print(f"{label:<40} {row['videos_per_s']:>9.2f} {row['videos_per_cpu_s']:>13.2f}", flush=True)
    return row


def generated_videos(folder: Path, count: int) -> list[VideoRequest]:
    """MSR-VTT-like clips when no eval set is given: 320x240 H.264 at 25 fps, 10-20 s."""
    requests = []
    for i in range(count):
        path = folder / f"video{i}.mp4"
        subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                        f"testsrc=size=320x240:rate=25:duration={10 + i % 11}", "-c:v", "libx264",
                        "-pix_fmt", "yuv420p", str(path)], check=True)
        requests.append(VideoRequest(path.stem, str(path)))
    return requests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "projects" / "how2_pretrain.yaml"),
                        help="run config: the model architecture (random init) and the eval protocol")
    parser.add_argument("--eval_video_root", help="MSR-VTT-format folder (default: the synthetic set, else "
                        "generated clips)")
    parser.add_argument("--num_videos", type=int, default=24)
    parser.add_argument("--num_windows_test", type=int)
    parser.add_argument("--num_frames", type=int)
    parser.add_argument("--fps", type=float)
    parser.add_argument("--video_size", type=int)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--output", help="write the rows as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # per-core numbers: one thread everywhere
    cfg: RunConfig = load_config(args.config)
    e = cfg.eval
    protocol = RetrievalProtocol(args.num_windows_test or e.num_windows_test, args.num_frames or e.num_frames,
                                 args.fps or e.fps, args.video_size or e.video_size)
    root = Path(args.eval_video_root) if args.eval_video_root else resolve_path(cfg.data.root) / "msrvtt"
    with tempfile.TemporaryDirectory() as scratch:
        if (root / "msrvtt_test.csv").is_file():
            requests = MsrvttRetrieval(protocol, root).dataset.requests[: args.num_videos]
            source = str(root)
        else:
            requests, source = generated_videos(Path(scratch), args.num_videos), "generated 320x240 10-20 s clips"
        model = random_init_model(cfg).model.eval()
        print(f"{len(requests)} videos from {source}; protocol {protocol}; model {cfg.model.video.preset}; "
              f"1 thread\n{'path':<40} {'videos/s':>9} {'videos/cpu-s':>13}")
        decode = functools.partial(decode_retrieval_windows, protocol=protocol)
        rows = []
        with torch.no_grad():
            embed_windows(model, [decode(requests[0])])  # warm-up: first-call allocations and kernel selection
            rows.append(timed("mmpt_lite decode (PyAV, in process)", len(requests),
                              lambda: [decode(r) for r in requests]))
            rows.append(timed("MIL-NCE decode (ffmpeg per window)", len(requests),
                              lambda: [milnce_ffmpeg_windows(r.path, protocol) for r in requests]))
            rows.append(timed("mmpt_lite decode+embed (evaluation path)", len(requests),
                              lambda: extract_window_features(model, requests, decode, output="video_embedding",
                                                              batch_size=args.batch_size, num_workers=0,
                                                              device=torch.device("cpu"), progress=False)))

            def baseline_decode_and_embed():
                for first in range(0, len(requests), args.batch_size):
                    chunk = requests[first:first + args.batch_size]
                    embed_windows(model, [milnce_ffmpeg_windows(r.path, protocol) for r in chunk])

            rows.append(timed("MIL-NCE decode+embed", len(requests), baseline_decode_and_embed))
    speedup = {"decode_per_cpu_s": rows[0]["videos_per_cpu_s"] / rows[1]["videos_per_cpu_s"],
               "decode_embed_per_cpu_s": rows[2]["videos_per_cpu_s"] / rows[3]["videos_per_cpu_s"],
               "decode_embed_wall": rows[2]["videos_per_s"] / rows[3]["videos_per_s"]}
    print("speed-up over MIL-NCE's loader: " + ", ".join(f"{k} {v:.2f}x" for k, v in speedup.items()))
    if args.output:
        Path(args.output).write_text(json.dumps({"protocol": protocol.__dict__, "source": source, "rows": rows,
                                                 "speedup": speedup, "cpu_count": os.cpu_count()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
