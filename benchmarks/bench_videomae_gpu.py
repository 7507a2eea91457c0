#!/usr/bin/env python
"""VideoMAE masked-pretraining throughput: videos/s, MFU and peak memory per configuration, in one table.

A training step is what ``train.task: mae`` runs: uint8 video -> float, ImageNet-normalised on the
device -> tube masks (0.9) drawn on the device -> encoder on visible tokens, decoder (depth 4) ->
normalised-pixel MSE -> backward -> fused AdamW step. bf16 autocast; attention through
``F.scaled_dot_product_attention`` restricted to the flash backend (an error, not a silent
fallback, if flash cannot run). Rows: torch.compile off/on × input

  (a) synthetic   uint8 batch already on the GPU (the model's ceiling)
  (b) loader      mmpt_lite's TrainLoader + MaeClipDataset over shards made here (64 ffmpeg test
                  videos, 30 fps frames stored ``--storage``, short side 256), stride 4, multi-scale crop

MFU = 3·2·(fvcore multiply-adds per video)·videos/s / peak bf16 FLOP/s (from the GPU name, or
``--peak_tflops``). The batch starts at ``--batch`` and halves on out-of-memory.

GPU (the issue's configuration, one call):  python benchmarks/bench_videomae_gpu.py
CPU (no GPU visible): a tiny configuration (vit_tiny, 4×32², batch 2, fp32, compile off) that checks
the script end to end; its numbers say nothing about GPUs.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from mmpt_lite.config import MaeConfig
from mmpt_lite.data.loader import TrainLoader
from mmpt_lite.data.shard_build import build_video_shards
from mmpt_lite.data.shards import ShardedVideoStore
from mmpt_lite.models.flops import TRAIN_FLOPS_PER_MAC, mae_macs_per_video, param_count
from mmpt_lite.models.mae import MaeMasks, build_mae_pretrainer
from mmpt_lite.models.preprocess import video_to_model_input
from mmpt_lite.train.trainer import peak_flops_per_s

GPU_DEFAULTS = dict(preset="vit_b", batch=256, frames=16, size=224, warmup=5, steps=20, compile="both")
CPU_DEFAULTS = dict(preset="vit_tiny", batch=2, frames=4, size=32, warmup=1, steps=2, compile="off")


def make_shards(folder: Path, *, videos: int, seconds: int, storage: str, short_side: int) -> Path:
    """Shards of ffmpeg test videos (moving pattern + noise, 30 fps) with frames at 30 fps."""
    sources = folder / "videos"
    sources.mkdir(parents=True, exist_ok=True)
    for i in range(videos):
        pattern = f"testsrc2=size=426x320:rate=30:duration={seconds},hue=h={37 * i},noise=alls=10:allf=t+u"
        subprocess.run(["ffmpeg", "-y", "-v", "error", "-f", "lavfi", "-i", pattern, "-c:v", "libx264", "-preset",
                        "ultrafast", "-pix_fmt", "yuv420p", str(sources / f"v{i:04d}.mp4")], check=True)
    video_list = folder / "videos.csv"
    with open(video_list, "w", newline="") as f:
        csv.writer(f).writerows([["video_path"]] + [[f"v{i:04d}.mp4"] for i in range(videos)])
    out = folder / f"shards_{storage}"
    build_video_shards(video_list, sources, out, storage=storage, fps=30.0, short_side=short_side,
                       videos_per_shard=64, workers=os.cpu_count() or 1, progress=False)
    return out


class MaeStep:
    """One optimizer step of masked pretraining on a uint8 [B, T, S, S, 3] batch on the device."""

    def __init__(self, args, device: torch.device, compiled: bool):
        torch.manual_seed(0)
        self.model = build_mae_pretrainer(args.preset, MaeConfig(mask_ratio=0.9, masking="tube", decoder_depth=4))
        self.macs, _ = mae_macs_per_video(self.model, args.frames, args.size)
        self.model.to(device).train()
        self.device = device
        self.mean = torch.tensor(self.model.video_mean, device=device)
        self.std = torch.tensor(self.model.video_std, device=device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.05,
                                           fused=device.type == "cuda")
        self.generator = torch.Generator(device).manual_seed(0)
        self.loss = torch.compile(self._loss) if compiled else self._loss
        self.bf16 = device.type == "cuda"

    def _loss(self, video: torch.Tensor, visible: torch.Tensor, decode: torch.Tensor, weight: torch.Tensor):
        # Tensors in, loss out: the function torch.compile sees (masks are drawn outside it).
        x = video_to_model_input(video, self.mean, self.std)
        return self.model(x, masks=MaeMasks(visible, decode, weight))["loss"]

    def __call__(self, video: torch.Tensor) -> torch.Tensor:
        masks = self.model.draw_masks((video.shape[0], 3, *video.shape[1:4]), self.generator)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16), attention_backend(self.device):
            loss = self.loss(video, masks.visible_index, masks.decode_index, masks.loss_weight)
            loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()


def attention_backend(device: torch.device):
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel(SDPBackend.FLASH_ATTENTION)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(step: MaeStep, batches, warmup: int, steps: int) -> tuple[float, float]:
    """(videos/s over ``steps`` steps after ``warmup`` untimed ones, last loss)."""
    for _ in range(warmup):
        step(next(batches))
    synchronize(step.device)
    begin, videos = time.perf_counter(), 0
    for _ in range(steps):
        video = next(batches)
        loss = step(video)
        videos += video.shape[0]
    synchronize(step.device)
    return videos / (time.perf_counter() - begin), float(loss)


def synthetic_batches(batch: int, args, device: torch.device):
    video = torch.randint(0, 256, (batch, args.frames, args.size, args.size, 3), dtype=torch.uint8, device=device)
    while True:
        yield video


def loader_batches(batch: int, args, device: torch.device, shard_root: Path):
    from mmpt_lite.data.video_sets import MaeClipDataset  # the training dataset, unchanged
    clips = MaeClipDataset(ShardedVideoStore(shard_root), num_frames=args.frames, stride=args.stride,
                           video_size=args.size)
    loader = TrainLoader(clips, batch_size=batch, rank=0, world_size=1,
                         seed=0, num_workers=args.workers, pin_memory=device.type == "cuda")
    for item in loader:
        yield item.video.to(device, non_blocking=True)


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process peak RSS (KiB -> GiB)


def run_row(args, device: torch.device, source: str, compiled: bool, shard_root: Path | None) -> dict:
    batch = args.batch
    while True:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        step = MaeStep(args, device, compiled)
        batches = (synthetic_batches(batch, args, device) if source == "synthetic"
                   else loader_batches(batch, args, device, shard_root))
        try:
            videos_per_s, loss = timed_steps(step, batches, args.warmup, args.steps)
            break
        except torch.OutOfMemoryError:
            if batch == 1:
                raise
            batch //= 2
        finally:
            batches.close()  # stops the loader's workers
    peak = peak_flops_per_s(device, args.peak_tflops)
    flops_per_video = TRAIN_FLOPS_PER_MAC * step.macs
    return {"input": source, "compile": "on" if compiled else "off", "batch": batch, "videos_per_s": videos_per_s,
            "mfu": flops_per_video * videos_per_s / peak if peak else None, "peak_memory_gib": peak_memory_gib(device),
            "loss": loss, "macs_per_video": step.macs, "params": param_count(step.model)}


def print_table(rows: list[dict], header: str) -> None:
    print(header)
    print(f"{'input':<10} {'compile':<8} {'batch':>6} {'videos/s':>10} {'MFU':>7} {'peak mem GiB':>13} {'loss':>8}")
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        print(f"{r['input']:<10} {r['compile']:<8} {r['batch']:>6} {r['videos_per_s']:>10.1f} {mfu:>7} "
              f"{r['peak_memory_gib']:>13.2f} {r['loss']:>8.4f}")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # Unset options take the GPU (issue) or the CPU (tiny check) defaults.
    p.add_argument("--preset", help="ViT preset (vit_b)")
    p.add_argument("--batch", type=int, help="videos per step; halved on out-of-memory (256)")
    p.add_argument("--frames", type=int, help="frames per clip (16)")
    p.add_argument("--size", type=int, help="crop side (224)")
    p.add_argument("--warmup", type=int, help="untimed steps first, compilation included (5)")
    p.add_argument("--steps", type=int, help="timed steps (20)")
    p.add_argument("--compile", choices=("off", "on", "both"), help="torch.compile rows (both)")
    p.add_argument("--inputs", default="synthetic,loader", help="comma list of: synthetic, loader")
    p.add_argument("--storage", default="raw", choices=("raw", "jpeg"), help="(b): how shard frames are stored")
    p.add_argument("--stride", type=int, default=4, help="(b): frames between samples (Kinetics 4)")
    # Each worker holds 4 prefetched batches in shared memory (616 MB each for 256 x 16 x 224² x 3).
    p.add_argument("--workers", type=int, default=min(12, max(1, (os.cpu_count() or 2) - 2)),
                   help="(b): loader workers")
    p.add_argument("--shard_root", default="", help="(b): existing video shards instead of generated ones")
    p.add_argument("--peak_tflops", type=float, default=0.0, help="MFU denominator (0 = from the GPU name)")
    p.add_argument("--json", default="", help="also write the rows here")
    args = p.parse_args(argv)
    defaults = GPU_DEFAULTS if torch.cuda.is_available() else CPU_DEFAULTS
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if not torch.cuda.is_available():
        args.workers = min(args.workers, 1)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (tiny check configuration)"
    compile_modes = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    sources = [s.strip() for s in args.inputs.split(",") if s.strip()]
    with tempfile.TemporaryDirectory(prefix="bench_videomae_") as tmp:
        shard_root = Path(args.shard_root) if args.shard_root else None
        if "loader" in sources and shard_root is None:
            began = time.perf_counter()
            count = 64 if device.type == "cuda" else 2
            shard_root = make_shards(Path(tmp), videos=count, seconds=4, storage=args.storage,
                                     short_side=256 if args.size >= 224 else int(round(args.size * 8 / 7)))
            print(f"(b) shards: {count} videos x 4 s, frames at 30 fps, {args.storage}, built in "
                  f"{time.perf_counter() - began:.0f} s", flush=True)
        rows, failures = [], []
        for source in sources:
            for compiled in compile_modes:
                label = f"{source}, compile {'on' if compiled else 'off'}"
                try:  # one failing row (e.g. no flash kernel, compile error) must not lose the others
                    rows.append(run_row(args, device, source, compiled, shard_root))
                    print(f"  done: {label}", flush=True)
                except Exception as exc:  # noqa: BLE001 - reported in the output, then the next row runs
                    failures.append(f"{label}: {type(exc).__name__}: {exc}")
                    print(f"  FAILED: {failures[-1]}", flush=True)
    if not rows:
        print("no configuration ran:\n" + "\n".join(failures))
        return 1
    first = rows[0]
    header = (f"VideoMAE pretraining {args.preset}, {args.frames}x{args.size}², tube 0.9, decoder depth 4, "
              f"{'bf16, SDPA flash, fused AdamW' if device.type == 'cuda' else 'fp32, AdamW'} | {name} | "
              f"{first['params'] / 1e6:.2f}M params, {first['macs_per_video'] / 1e9:.3f} G MACs/video | torch "
              f"{torch.__version__} | loader: {args.workers} workers, {args.storage} shards, stride {args.stride}")
    print_table(rows, header)
    for failure in failures:
        print(f"failed: {failure}")
    if args.json:
        Path(args.json).write_text(json.dumps({"header": header, "rows": rows, "failures": failures}, indent=1))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
