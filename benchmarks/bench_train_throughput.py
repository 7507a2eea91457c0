#!/usr/bin/env python
"""How much of this CPU's arithmetic the main job's training step uses, and which settings raise it.

The yardstick is a measured matrix product: a 2048³ fp32 GEMM (and bf16, for the bf16 rows) with every core,
median of 5 repeats. Each setting then runs the contrastive task's real step -- uint8 clips through
``VideoInput``, the video and text towers, MIL-NCE with the config's candidates and action-swapped
negatives, backward, gradient clipping, the optimiser -- on random batches of the config's shapes (no
loader: what the towers can do on this CPU), in a fresh process group per setting:

  ranks x threads   2 x 1 is what ``--jobtype local_small`` runs (gloo DDP, one core per rank); 1 x 2 is one
                    process using both cores
  batch             clips per rank
  precision         fp32, or bf16 autocast (native on CPUs with AVX512-BF16 or AMX)

and reports clips/s of the whole group, the video tower's training GFLOP/s (``scripts/count_flops.py``'s
3 x 2 x multiply-adds per clip, the figure the trainer's MFU uses) and its ratio to the fp32 GEMM peak.
The first row is the baseline (the main job's settings before tuning); the last column is each row's speed
relative to it.

  python benchmarks/bench_train_throughput.py                 # projects/how2_pretrain.yaml, ~3 min on 2 cores
  python benchmarks/bench_train_throughput.py --quick         # fewer steps and settings
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mmpt_lite.config import load_config
from mmpt_lite.data.batch import ClipBatch
from mmpt_lite.losses.build import build_loss
from mmpt_lite.models.build import build_model
from mmpt_lite.models.flops import TRAIN_FLOPS_PER_MAC, video_macs_per_video
from mmpt_lite.train.tasks.contrastive import ContrastiveTask

# (ranks, threads per rank, clips per rank, precision); the first is the baseline.
SETTINGS = [(2, 1, 16, "fp32"), (1, 2, 32, "fp32"), (1, 2, 64, "fp32"), (2, 1, 32, "fp32"),
            (2, 1, 16, "bf16"), (1, 2, 32, "bf16"), (2, 1, 32, "bf16")]
QUICK_SETTINGS = [(2, 1, 16, "fp32"), (1, 2, 32, "fp32"), (2, 1, 16, "bf16")]


class VideoPath(torch.nn.Module):
    """video [B, 3, T, S, S] -> video_embedding [B, D]: the tower and projection whose FLOPs are counted."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.model.encode_video(video)["video_embedding"]


def gemm_gflops(dtype: torch.dtype, size: int = 2048, reps: int = 5, iters: int = 10) -> float:
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    for _ in range(3):
        a @ b
    rates = []
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(iters):
            a @ b
        rates.append(2 * size ** 3 * iters / (time.perf_counter() - start) / 1e9)
    return statistics.median(rates)


def random_batch(cfg, vocab_size: int, batch: int, generator: torch.Generator) -> ClipBatch:
    """Random uint8 clips [B, T, S, S, 3] and token rows shaped like the config's batches."""
    d = cfg.data
    video = torch.randint(0, 256, (batch, d.num_frames, d.video_size, d.video_size, 3), dtype=torch.uint8,
                          generator=generator)
    words = lambda *shape: torch.randint(1, vocab_size, shape, generator=generator)  # noqa: E731
    clip_batch = ClipBatch(video, torch.arange(batch), {"input_ids": words(batch, d.num_candidates, d.max_words)})
    if d.action_negatives.count:
        clip_batch.negative_text = {"input_ids": words(batch, d.action_negatives.count, d.max_words)}
        clip_batch.negative_mask = torch.ones(batch, d.action_negatives.count, dtype=torch.bool)
    return clip_batch


def _worker(rank: int, world: int, threads: int, batch: int, precision: str, config: str, steps: int,
            init_file: str, out: str) -> None:
    torch.set_num_threads(threads)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    cfg = load_config(config)
    vocab = [f"word{i}" for i in range(400)]
    model = build_model(cfg.model, vocab=vocab, max_words=cfg.data.max_words)
    task = ContrastiveTask(model, build_loss(cfg.loss), torch.device("cpu"))
    module = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.Adam(params, lr=cfg.optim.lr)
    generator = torch.Generator().manual_seed(rank)
    batches = [random_batch(cfg, len(vocab) + 1, batch, generator) for _ in range(4)]

    def step(i: int) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = task.step(module, batches[i % len(batches)])["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip or float("inf"))
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)

    for i in range(3):
        step(i)
    if world > 1:
        dist.barrier()
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    if world > 1:
        dist.barrier()
    elapsed = time.perf_counter() - start
    if rank == 0:
        with open(out, "w") as f:
            json.dump({"clips_per_s": world * batch * steps / elapsed}, f)
    if world > 1:
        dist.destroy_process_group()


def run_setting(world: int, threads: int, batch: int, precision: str, config: str, steps: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        init_file, out = os.path.join(tmp, "init"), os.path.join(tmp, "out.json")
        args = (world, threads, batch, precision, config, steps, init_file, out)
        if world == 1:
            _worker(0, *args)
        else:
            mp.spawn(_worker, args=args, nprocs=world, join=True)
        with open(out) as f:
            return json.load(f)["clips_per_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="projects/how2_pretrain.yaml")
    p.add_argument("--steps", type=int, default=20, help="timed steps per setting (after 3 warm-up steps)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args()
    steps = 8 if args.quick else args.steps
    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(cores)
    cfg = load_config(args.config)
    model = build_model(cfg.model, vocab=["word"], max_words=cfg.data.max_words)
    macs, _ = video_macs_per_video(VideoPath(model), cfg.data.num_frames, cfg.data.video_size)
    gflop_per_clip = TRAIN_FLOPS_PER_MAC * macs / 1e9
    peak = {"fp32": gemm_gflops(torch.float32), "bf16": gemm_gflops(torch.bfloat16)}
    print(f"{platform.processor() or platform.machine()}, {cores} cores, torch {torch.__version__}; "
          f"{args.config}: video tower {gflop_per_clip:.2f} training GFLOP per clip")
    print(f"2048³ GEMM with {cores} threads: fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s")
    print(f"{'ranks x threads':<16}{'batch/rank':>11}{'precision':>10}{'clips/s':>9}{'GFLOP/s':>9}"
          f"{'/ fp32 GEMM':>12}{'vs baseline':>12}")
    rows, base = [], None
    for world, threads, batch, precision in (QUICK_SETTINGS if args.quick else SETTINGS):
        if world * threads > cores:
            continue
        rate = run_setting(world, threads, batch, precision, args.config, steps)
        base = base or rate
        gflops = rate * gflop_per_clip
        rows.append({"ranks": world, "threads": threads, "batch": batch, "precision": precision,
                     "clips_per_s": rate, "gflops": gflops, "fraction_of_fp32_gemm": gflops / peak["fp32"]})
        print(f"{f'{world} x {threads}':<16}{batch:>11}{precision:>10}{rate:>9.1f}{gflops:>9.0f}"
              f"{gflops / peak['fp32']:>12.2f}{rate / base:>11.2f}x", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"peak_gflops": peak, "gflop_per_clip": gflop_per_clip, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
