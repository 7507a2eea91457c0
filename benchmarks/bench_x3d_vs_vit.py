#!/usr/bin/env python
"""Training throughput of X3D-S at 13×160² against a ViT-S doing the same multiply-adds per clip, on this CPU.

X3D-S does 1.96 G multiply-adds per 13×160² clip in 3.8 M parameters, most of them in 1×1×1 convs and
channel-wise 3×3×3 convs over large activations; ViT-S spends its multiply-adds in big matrix products over
few tokens. At equal counted work the question is which one the CPU runs faster. The ViT-S input is chosen
so its fvcore multiply-adds (``mmpt_lite.models.flops``) are closest to X3D-S's published 1.96 G: a ViT's
count depends only on its token count N = T/2 · H/16 · W/16, so the N closest to the target is picked, then
the shape with that N with frames of at least 112 px a side, H:W at most 3:2, and the most frames. At
this budget that leaves one tubelet of 2 frames (ViT-S at 13×160² -- 12×160², 600 tokens -- does 16.4 G).

Each row is a training step -- forward, cross-entropy on random labels, backward, SGD with momentum -- on
random normalised clips of one batch size, fp32 and (where the CPU has AVX512-BF16/AMX, see
``mmpt_lite.precision``) bf16 autocast; X3D also with ``channels_last_3d`` weights and inputs. clips/s is
the median over the timed steps; GFLOP/s is 3 (forward + backward) · 2 · multiply-adds · clips/s with the
package's fvcore count (X3D's includes BatchNorm, 2 per element; ViT's includes LayerNorm).

  env -u OMP_NUM_THREADS python benchmarks/bench_x3d_vs_vit.py                  # ~3 min on 2 cores
  env -u OMP_NUM_THREADS python benchmarks/bench_x3d_vs_vit.py --seconds 5 --batch 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from mmpt_lite.models.flops import TRAIN_FLOPS_PER_MAC, FinetuneViT, count_macs, video_macs_per_video
from mmpt_lite.models.x3d import x3d_s
from mmpt_lite.precision import cpu_has_native_bf16

X3D_FRAMES, X3D_SIZE = 13, 160
TUBELET, PATCH = 2, 16


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return "unknown CPU"


class Logits(nn.Module):
    """Either network as video [B, 3, T, H, W] -> logits [B, classes] (X3D returns a dict)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        out = self.model(video)
        return out["logits"] if isinstance(out, dict) else out


def vit_macs(vit: nn.Module, tokens: int) -> int:
    """ViT MACs at ``tokens`` tokens (a 2 × 16 × 16·tokens clip has exactly that many)."""
    return count_macs(vit, (torch.zeros(1, 3, TUBELET, PATCH, PATCH * tokens),))[0]


def vit_shape_for(tokens: int, max_aspect: float = 1.5, min_side: int = 7) -> tuple[int, int, int] | None:
    """(T, H, W) with ``tokens`` tubelets, frames of at least ``min_side`` patches a side (112 px) and
    H:W <= ``max_aspect``: the most frames, then the squarest."""
    best = None
    for slices in range(1, tokens + 1):
        if tokens % slices:
            continue
        per_frame = tokens // slices
        for h in range(min_side, per_frame + 1):
            w, rem = divmod(per_frame, h)
            if rem or h > w or w / h > max_aspect:
                continue
            key = (slices, -(w / h))
            if best is None or key > best[0]:
                best = (key, (TUBELET * slices, PATCH * h, PATCH * w))
    return best[1] if best else None


def match_vit_input(vit: nn.Module, target: float) -> tuple[tuple[int, int, int], int]:
    """The ViT input (T, H, W) whose MACs are closest to ``target`` among token counts that have a shape."""
    per_token = vit_macs(vit, 64) / 64  # about linear in N at these sizes; refined by exact counts below
    guess = round(target / per_token)
    candidates = [n for n in range(max(1, guess - 16), guess + 17) if vit_shape_for(n)]
    counts = {n: vit_macs(vit, n) for n in candidates}
    tokens = min(counts, key=lambda n: abs(counts[n] - target))
    return vit_shape_for(tokens), counts[tokens]


def time_training(model: nn.Module, shape: tuple[int, ...], bf16: bool, channels_last: bool,
                  seconds: float, num_classes: int = 400) -> tuple[float, int]:
    """Median clips/s of SGD training steps on random inputs of ``shape``, and how many steps were timed."""
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    video = torch.randn(shape, generator=generator).contiguous(memory_format=fmt)
    labels = torch.randint(0, num_classes, (shape[0],), generator=generator)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(video).float(), labels)
        loss.backward()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)

    step()  # warm-up: oneDNN primitive creation, allocator
    times, start = [], time.perf_counter()
    while len(times) < 3 or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    model.to(memory_format=torch.contiguous_format)
    return shape[0] / statistics.median(times), len(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads (all cores)")
    p.add_argument("--seconds", type=float, default=12.0, help="timed seconds per row (at least 3 steps)")
    p.add_argument("--batch", type=int, default=4, help="clips per step, both networks")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "both"), default="auto",
                   help="auto: fp32, plus bf16 where the CPU multiplies bf16 natively")
    p.add_argument("--no-channels-last", action="store_true", help="skip X3D's channels_last_3d rows")
    p.add_argument("--vit-input", type=int, nargs=3, metavar=("T", "H", "W"), help="override the matched ViT input")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args()
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # torch.jit under fvcore's tracer
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    x3d, vit = Logits(x3d_s(400)), FinetuneViT("vit_s", 400)
    x3d_macs, x3d_ops = video_macs_per_video(x3d, X3D_FRAMES, X3D_SIZE)
    x3d_published = x3d_macs - x3d_ops.get("batch_norm", 0)  # conv + linear, what the 1.96 G counts
    if args.vit_input:
        vit_t, vit_h, vit_w = args.vit_input
    else:
        (vit_t, vit_h, vit_w), _ = match_vit_input(vit, x3d_published)
    vit_total, vit_ops = count_macs(vit, (torch.zeros(1, 3, vit_t, vit_h, vit_w),))

    precisions = {"auto": ["fp32", "bf16"] if cpu_has_native_bf16() else ["fp32"], "fp32": ["fp32"],
                  "bf16": ["bf16"], "both": ["fp32", "bf16"]}[args.precision]
    print(f"{cpu_name()}, {args.threads} threads, torch {torch.__version__}, native bf16: {cpu_has_native_bf16()}")
    print(f"X3D-S {X3D_FRAMES}×{X3D_SIZE}²: {x3d_macs / 1e9:.3f} G MACs/clip "
          f"({', '.join(f'{k} {v / 1e9:.3f}' for k, v in sorted(x3d_ops.items()))}); "
          f"{sum(p.numel() for p in x3d.parameters()) / 1e6:.2f} M params")
    print(f"ViT-S {vit_t}×{vit_h}×{vit_w} ({vit_t // TUBELET * (vit_h // PATCH) * (vit_w // PATCH)} tokens): "
          f"{vit_total / 1e9:.3f} G MACs/clip ({', '.join(f'{k} {v / 1e9:.3f}' for k, v in sorted(vit_ops.items()))}); "
          f"{sum(p.numel() for p in vit.parameters()) / 1e6:.2f} M params")
    print(f"batch {args.batch}, SGD training steps, median over >= {args.seconds:.0f} s per row; "
          f"load average before: {os.getloadavg()[0]:.1f}\n")
    print(f"{'model':<8}{'input':>14}{'precision':>10}{'memory':>15}{'steps':>6}{'clips/s':>9}{'GFLOP/s':>9}"
          f"{'X3D/ViT':>9}")

    rows = []
    for precision in precisions:
        bf16 = precision == "bf16"
        vit_rate, vit_steps = time_training(vit, (args.batch, 3, vit_t, vit_h, vit_w), bf16, False, args.seconds)
        x3d_rows = [(False, *time_training(x3d, (args.batch, 3, X3D_FRAMES, X3D_SIZE, X3D_SIZE), bf16, False,
                                           args.seconds))]
        if not args.no_channels_last:
            x3d_rows.append((True, *time_training(x3d, (args.batch, 3, X3D_FRAMES, X3D_SIZE, X3D_SIZE), bf16, True,
                                                  args.seconds)))
        table = [("ViT-S", f"{vit_t}×{vit_h}×{vit_w}", "contiguous", vit_steps, vit_rate, vit_total, None)]
        table += [("X3D-S", f"{X3D_FRAMES}×{X3D_SIZE}²", "channels_last" if cl else "contiguous", steps, rate,
                   x3d_macs, rate / vit_rate) for cl, rate, steps in x3d_rows]
        for name, shape, memory, steps, rate, macs, ratio in table:
            gflops = TRAIN_FLOPS_PER_MAC * macs * rate / 1e9
            print(f"{name:<8}{shape:>14}{precision:>10}{memory:>15}{steps:>6}{rate:>9.2f}{gflops:>9.1f}"
                  f"{'' if ratio is None else f'{ratio:.2f}x':>9}", flush=True)
            rows.append({"model": name, "input": shape, "precision": precision, "memory": memory, "steps": steps,
                         "clips_per_s": rate, "gflops": gflops, "x3d_over_vit": ratio})
    load = os.getloadavg()[0]
    if load > args.threads + 0.5:  # other processes shared these cores: absolute rates are low, ratios noisy
        print(f"warning: load average {load:.1f} > {args.threads} threads -- the CPU was shared during timing")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"x3d_macs": x3d_macs, "vit_macs": vit_total, "vit_input": [vit_t, vit_h, vit_w],
                       "batch": args.batch, "threads": args.threads, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
