#!/usr/bin/env python
"""Indexing throughput of ``mmpt-lite index`` against the MSR-VTT evaluator's own feature extraction, same folder,
same checkpoint, same decoder workers and threads.

Both paths decode the checkpoint's eval windows (num_frames at fps, centre square, video_size) with the same
PyAV decoder and feed the same video tower. The evaluator embeds ``num_windows_test`` windows per video spread
over the whole clip; the index embeds every window at half-window stride (more windows for long videos) and
also probes each file, writes its commits and the faiss file. Reported per path: videos/s and windows/s of wall
clock and videos per CPU-second (this process plus its finished decode workers): the per-core rate, which
stays meaningful on a shared machine. Then the index/evaluator ratios.

  env -u OMP_NUM_THREADS python benchmarks/bench_index.py --checkpoint runs/how2_pretrain/contrastive
  python benchmarks/bench_index.py --checkpoint RUN --video_root /data/msrvtt --workers 1 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from mmpt_lite.config import resolve_path
from mmpt_lite.evaluation.cache import FeatureCache
from mmpt_lite.evaluation.runtime import EvalRuntime
from mmpt_lite.evaluation.zeroshot import MsrvttRetrieval
from mmpt_lite.search.index import IndexRun, update_index
from mmpt_lite.search.model import default_protocol, load_search_model

REPO = Path(__file__).resolve().parents[1]


def cpu_seconds() -> float:
    """User + system CPU time of this process and its waited-for children (the DataLoader's decode workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(label: str, videos: int, work) -> dict:
    wall, cpu = time.perf_counter(), cpu_seconds()
    windows = work()
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    row = {"path": label, "videos": videos, "windows": windows, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
           "videos_per_s": round(videos / wall, 3), "windows_per_s": round(windows / wall, 2),
           "videos_per_cpu_s": round(videos / cpu, 3)}
    print(f"{label:<34} {videos:>6} {windows:>8} {wall:>8.1f} {cpu:>8.1f} {row['videos_per_s']:>9.2f} "
          f"{row['windows_per_s']:>10.1f} {row['videos_per_cpu_s']:>13.3f}", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a video-text checkpoint (mmpt_lite run folder, ...)")
    parser.add_argument("--video_root", help="MSR-VTT-format folder: msrvtt_test.csv + <video_id>.mp4 (default: "
                        "the synthetic set under the checkpoint's data.root)")
    parser.add_argument("--workers", type=int, default=1, help="decode worker processes, both paths (default 1, "
                        "the evaluator's --num_thread_reader default)")
    parser.add_argument("--eval_batch_size", type=int, default=16, help="videos per forward pass, evaluator")
    parser.add_argument("--index_batch_size", type=int, default=64, help="windows per forward pass, index")
    parser.add_argument("--commit_every", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1, help="alternate the two paths this many times")
    parser.add_argument("--output", help="write the rows as JSON here")
    args = parser.parse_args(argv)

    loaded, record = load_search_model(args.checkpoint)
    model = loaded.model.eval()
    run_cfg = loaded.config
    root = Path(args.video_root) if args.video_root else resolve_path(run_cfg.data.root) / "msrvtt"
    evaluator = MsrvttRetrieval(MsrvttRetrieval.protocol_from_config(run_cfg.eval if run_cfg else None), root)
    requests = evaluator.dataset.requests
    runtime = EvalRuntime(torch.device("cpu"), args.eval_batch_size, args.workers, FeatureCache(None), progress=False)
    protocol = default_protocol(loaded)
    print(f"{len(requests)} videos in {root}; checkpoint {record['load_path']}; window {protocol.num_frames} frames "
          f"at {protocol.fps:g} fps, {protocol.video_size} px; {args.workers} decode worker(s); torch threads "
          f"{torch.get_num_threads()}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; "
          f"{os.cpu_count()} CPUs")
    print(f"{'path':<34} {'videos':>6} {'windows':>8} {'wall s':>8} {'cpu s':>8} {'videos/s':>9} {'windows/s':>10} "
          f"{'videos/cpu-s':>13}")
    with torch.no_grad():  # warm-up: first-call allocations and kernel selection, outside both timings
        evaluator.window_features(model, EvalRuntime(progress=False, cache=FeatureCache(None)), requests[:1])

    def evaluate() -> int:
        found, _ = evaluator.window_features(model, runtime, requests)
        assert found.readable.all(), found.errors
        return int(found.features.shape[0] * found.features.shape[1])

    rows = {"evaluator": [], "index": []}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            rows["evaluator"].append(timed("evaluator window features", len(requests), evaluate))

            def index(out=Path(scratch) / f"index{repeat}") -> int:
                report = update_index(root, out, loaded, record, protocol,
                                      IndexRun(batch_size=args.index_batch_size, num_workers=args.workers,
                                               commit_every=args.commit_every, progress=False))
                assert not report.skipped, report.skipped
                return report.windows_embedded

            rows["index"].append(timed("mmpt-lite index (clean build)", len(requests), index))

    def best(path: str, key: str) -> float:
        return max(row[key] for row in rows[path])

    ratio = {key: best("index", key) / best("evaluator", key) for key in ("videos_per_cpu_s", "videos_per_s",
                                                                         "windows_per_s")}
    print("index / evaluator (best of repeats): " + ", ".join(f"{k} {v:.2f}x" for k, v in ratio.items()))
    if args.output:
        Path(args.output).write_text(json.dumps({"root": str(root), "checkpoint": record["load_path"],
                                                 "protocol": protocol.to_json(), "rows": rows, "ratio": ratio,
                                                 "cpu_count": os.cpu_count(),
                                                 "torch_threads": torch.get_num_threads()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
