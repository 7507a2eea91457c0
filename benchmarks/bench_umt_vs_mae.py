#!/usr/bin/env python
"""Training-step throughput of UMT stage 1 against VideoMAE masked pretraining at the same student size.

Both run their task's real step (``UmtTask.step`` / ``MaskedTask.step``: uint8 clips normalised on the device,
selection or masks from a per-step generator, forward, backward, AdamW) on random uint8 batches -- no loader,
what the models cost on this CPU. The MAE student is the preset with tubelet 2 and tube masking 0.9 plus its
depth-4 decoder; the UMT student is the same preset with tubelet 1 on ``keep`` of each frame's tokens, plus the
frozen teacher's forward on every token of every frame (``--teacher vit``: a random ViT of the student's
preset, as projects/umt_cpu.yaml's masked-stage teacher; ``--teacher <folder>``: a local CLIP folder).

Reported per objective: student (encoder) tokens per clip, clips/s (median step time over the timed steps),
and UMT / MAE ratio.

  env -u OMP_NUM_THREADS python benchmarks/bench_umt_vs_mae.py                  # vit_tiny_p8, 8 x 64², ~1 min
  python benchmarks/bench_umt_vs_mae.py --preset vit_s --size 224 --batch 2      # a larger student
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace

import torch

from mmpt_lite.config import MaeConfig
from mmpt_lite.models.build import VIDEO_PRESETS
from mmpt_lite.models.mae import build_mae_pretrainer
from mmpt_lite.models.umt import VitTeacher, build_umt_student, load_teacher
from mmpt_lite.models.vit import VideoViT
from mmpt_lite.train.tasks.base import StepSeeds
from mmpt_lite.train.tasks.masked import MaskedTask
from mmpt_lite.train.tasks.umt import UmtTask, kept_per_frame


def time_steps(model, task, video, steps: int, warmup: int, bf16: bool = False) -> list[float]:
    """Seconds per training step (forward, backward, AdamW) after ``warmup`` untimed steps; under bf16 autocast
    when ``bf16`` (as the trainer runs on a GPU), synchronised with the device before each clock read."""
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batch, times = SimpleNamespace(video=video), []
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for i in range(warmup + steps):
        sync()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = task.step(model, batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="vit_tiny_p8")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--keep", type=float, default=0.2, help="UMT tokens kept per frame")
    parser.add_argument("--mask-ratio", type=float, default=0.9, help="VideoMAE tube mask ratio")
    parser.add_argument("--align-layers", type=int, default=4)
    parser.add_argument("--teacher", default="vit", help="'vit' (random ViT of the preset) or a local CLIP folder")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda: bf16 autocast, as training")
    args = parser.parse_args()
    device = torch.device(args.device)
    bf16 = device.type == "cuda"
    torch.manual_seed(0)
    video = torch.randint(0, 256, (args.batch, args.frames, args.size, args.size, 3), dtype=torch.uint8)

    mae = build_mae_pretrainer(args.preset, MaeConfig(mask_ratio=args.mask_ratio))
    t, h, w = mae.encoder.token_grid((1, 3, args.frames, args.size, args.size))
    mae_tokens = t * (h * w - int(args.mask_ratio * h * w))
    mae = mae.to(device)
    mae_times = time_steps(mae, MaskedTask(mae, StepSeeds(0, 0), device), video, args.steps, args.warmup, bf16)

    if args.teacher == "vit":
        spec = {k: v for k, v in VIDEO_PRESETS[args.preset].items() if k != "arch"}
        teacher = VitTeacher(VideoViT(**{**spec, "tubelet_size": 1}), args.align_layers)
    else:
        teacher = load_teacher("clip", args.teacher, args.align_layers)
    umt = build_umt_student(args.preset, teacher.out_dim, args.align_layers).to(device)
    per_frame = (args.size // umt.encoder.patch_size) ** 2
    umt_tokens = args.frames * kept_per_frame(per_frame, args.keep)
    umt_task = UmtTask(umt, teacher, args.keep, StepSeeds(0, 0), device)
    umt_times = time_steps(umt, umt_task, video, args.steps, args.warmup, bf16)

    mae_rate = args.batch / statistics.median(mae_times)
    umt_rate = args.batch / statistics.median(umt_times)
    where = torch.cuda.get_device_name(device) + ", bf16" if bf16 else f"{torch.get_num_threads()} threads"
    print(f"{args.preset}, {args.frames}x{args.size}², batch {args.batch}, {where}, "
          f"{args.steps} timed steps; UMT teacher: {args.teacher} ({args.frames * per_frame} tokens per clip, "
          "forward only)")
    print("| objective | student tubelet | student tokens / clip | student tokens / step | s / step | clips/s | vs MAE |")
    print("|---|---|---|---|---|---|---|")
    print(f"| VideoMAE (tube {args.mask_ratio:g}, decoder 4) | 2 | {mae_tokens} | {mae_tokens * args.batch} | "
          f"{statistics.median(mae_times):.3f} | {mae_rate:.1f} | 1.00 |")
    print(f"| UMT (keep {args.keep:g}, align {args.align_layers}) | 1 | {umt_tokens} | {umt_tokens * args.batch} | "
          f"{statistics.median(umt_times):.3f} | {umt_rate:.1f} | {umt_rate / mae_rate:.2f} |")


if __name__ == "__main__":
    main()
