#!/usr/bin/env python
"""Retrieval mining at HowTo100M scale: faiss index build + batch plan for 1M clustered 768-d vectors.

The corpus stands in for one epoch's video embeddings (HowTo100M has ~1.2M videos): float32 unit
vectors around ``--clusters`` centres, which are themselves grouped around ``--topics`` topic centres
(so neighbouring clusters overlap, as tasks do), with per-vector noise. Each setting builds a
``NeighbourIndex`` and a full ``build_mined_plan`` (one clip per video, global batch ``--batch``)
and reports, on this machine:

  build_s      index training + adding all vectors
  plan_s       the whole batch plan (seed rounds, searches, leftovers), covering every vector
  cpu_s        CPU seconds of all threads over build + plan (a check on wall times taken beside other load)
  peak_rss_gb  the process's peak RSS during build + plan (it includes the vector array itself)
  recall@1     fraction of ``--queries`` random queries whose true nearest neighbour (excluding itself,
               by brute force) comes first from the index at the setting's nprobe
  pool_recall  mean fraction of a query's true 2·batch nearest neighbours found in its 2·batch pool
  sim mined / random: mean in-batch cosine similarity of the mined plan vs a random plan

Settings: VideoCLIP's (IVFFlat, nlist 512, nprobe 1) as the baseline, then ours (see docs/benchmarks.md).
Usage: python benchmarks/bench_retri.py [--num 1000000] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import faiss
import numpy as np

from mmpt_lite.data.loader import epoch_plan
from mmpt_lite.retrieval.index import NeighbourIndex
from mmpt_lite.retrieval.plan import build_mined_plan, mean_batch_similarity

# (label, kind, nlist, nprobe)
SETTINGS = [("VideoCLIP baseline", "ivfflat", 512, 1), ("ours", "ivfflat", 512, 4)]


def clustered_corpus(num: int, dim: int, clusters: int, topics: int, noise: float, seed: int,
                     chunk: int = 100_000) -> np.ndarray:
    """float32 [num, dim] unit vectors: topic centre + cluster offset + noise, generated in chunks."""
    rng = np.random.default_rng(seed)
    topic = rng.standard_normal((topics, dim), dtype=np.float32)
    centres = topic[rng.integers(0, topics, clusters)] + 0.8 * rng.standard_normal((clusters, dim), dtype=np.float32)
    out = np.empty((num, dim), dtype=np.float32)
    for start in range(0, num, chunk):
        stop = min(num, start + chunk)
        x = centres[rng.integers(0, clusters, stop - start)]
        x += noise * rng.standard_normal(x.shape, dtype=np.float32)
        out[start:stop] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def reset_peak_rss() -> None:
    """Start a new peak-RSS window (Linux: writing 5 to clear_refs resets VmHWM)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_gb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def true_neighbours(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k ids (brute force, the query itself removed): int64 [Q, k]."""
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    _, ids = exact.search(vectors[queries], k + 1)
    return np.stack([row[row != q][:k] for row, q in zip(ids, queries, strict=True)])


def run_setting(vectors: np.ndarray, label: str, kind: str, nlist: int, nprobe: int, *, batch: int,
                queries: np.ndarray, truth: np.ndarray) -> dict:
    reset_peak_rss()
    cpu_start, start = time.process_time(), time.perf_counter()
    index = NeighbourIndex(vectors, kind=kind, metric="ip", nlist=nlist, nprobe=nprobe)
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    mined = build_mined_plan(vectors, index, world_size=1, batch_size=batch, neighbours_factor=2,
                             rng=np.random.default_rng(0))
    plan_s = time.perf_counter() - start
    cpu_s = time.process_time() - cpu_start  # all threads; unlike wall time, barely moved by other load
    peak = peak_rss_gb()
    pool = 2 * batch
    _, found = index.search(vectors[queries], pool + 1)
    found = [row[row != q] for row, q in zip(found, queries, strict=True)]
    recall1 = float(np.mean([len(f) > 0 and f[0] == t[0] for f, t in zip(found, truth, strict=True)]))
    pool_recall = float(np.mean([len(set(f[:pool]) & set(t[:pool])) / pool for f, t in zip(found, truth, strict=True)]))
    counts = np.bincount(mined.plan.ravel(), minlength=len(vectors))
    random_plan = epoch_plan(len(vectors), epoch=0, seed=0, world_size=1, batch_size=batch)
    return {"setting": label, "index": index.describe(), "build_s": round(build_s, 2), "plan_s": round(plan_s, 2),
            "total_s": round(build_s + plan_s, 2), "cpu_s": round(cpu_s, 1), "peak_rss_gb": round(peak, 2), "recall@1": round(recall1, 3),
            "pool_recall": round(pool_recall, 3), "steps": len(mined.plan), "mined_batches": mined.mined_batches,
            "rounds": mined.rounds, "final_nprobe": mined.final_nprobe, "covered": bool((counts >= 1).all()),
            "sim_mined": round(mean_batch_similarity(vectors, mined.plan), 3),
            "sim_random": round(mean_batch_similarity(vectors, random_plan), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--clusters", type=int, default=20_000)
    parser.add_argument("--topics", type=int, default=200)
    parser.add_argument("--noise", type=float, default=1.0, help="per-coordinate noise std (centres: ~1.28)")
    parser.add_argument("--batch", type=int, default=512, help="global batch (world × per-rank batch)")
    parser.add_argument("--queries", type=int, default=500, help="queries for the recall measurement")
    parser.add_argument("--setting", action="append", default=[], metavar="LABEL:KIND:NLIST:NPROBE",
                        help="extra setting(s), e.g. ours2:ivfflat:1024:16")
    parser.add_argument("--quick", action="store_true", help="100k vectors (a smoke run)")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    num = 100_000 if args.quick else args.num
    settings = SETTINGS + [(s.split(":")[0], s.split(":")[1], int(s.split(":")[2]), int(s.split(":")[3]))
                           for s in args.setting]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, faiss {faiss.__version__} "
          f"({faiss.omp_get_max_threads()} threads)")
    start = time.perf_counter()
    vectors = clustered_corpus(num, args.dim, args.clusters, args.topics, args.noise, seed=0)
    print(f"corpus: {num} x {args.dim} float32 ({vectors.nbytes / 2**30:.2f} GiB), {args.clusters} clusters in "
          f"{args.topics} topics, noise {args.noise}: {time.perf_counter() - start:.1f}s")
    queries = np.random.default_rng(1).choice(num, args.queries, replace=False)
    start = time.perf_counter()
    truth = true_neighbours(vectors, queries, 2 * args.batch)
    print(f"ground truth (brute force, {args.queries} queries): {time.perf_counter() - start:.1f}s")
    rows = []
    for label, kind, nlist, nprobe in settings:
        rows.append(run_setting(vectors, label, kind, nlist, nprobe, batch=args.batch, queries=queries, truth=truth))
        print(json.dumps(rows[-1]), flush=True)
    keys = ["setting", "index", "build_s", "plan_s", "total_s", "cpu_s", "peak_rss_gb", "recall@1", "pool_recall",
            "rounds", "sim_mined", "sim_random"]
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in keys) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"num": num, "dim": args.dim, "batch": args.batch, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
