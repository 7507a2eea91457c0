"""Parameters and multiply-adds (fvcore) of a run config's model as it is trained, per video.

  python scripts/count_flops.py projects/videomae_pretrain.yaml
  python scripts/count_flops.py projects/videomae_pretrain.yaml --set model.video.preset=vit_s

``train.task: mae``: the masked-pretraining model at ``data.num_frames``×``data.video_size``² with the
configured masking (encoder on visible tokens, decoder, head on reconstructed tokens), plus the
fine-tuning ViT of the same preset (all tokens, ``--finetune_classes``-way head) for reference.
``train.task: milnce``: the video tower and its projection on one clip. ``train.task: classify``: the
fine-tuning classifier (``--num_classes``-way head, Kinetics-400 by default) on one training clip.
Training FLOPs per video = 3·2·MACs (what the trainer's MFU uses).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

from torch import nn

from mmpt_lite.config import ConfigError, load_config
from mmpt_lite.models.build import build_video_tower
from mmpt_lite.models.classifier import build_classifier
from mmpt_lite.models.flops import (
    TRAIN_FLOPS_PER_MAC,
    FinetuneViT,
    mae_macs_per_video,
    param_count,
    video_macs_per_video,
)
from mmpt_lite.models.mae import build_mae_pretrainer


class VideoEmbedding(nn.Module):
    """A MIL-NCE video tower with its projection (ViT presets): video -> embedding."""

    def __init__(self, tower: nn.Module, embed_dim: int):
        super().__init__()
        self.tower = tower
        self.proj = nn.Linear(tower.width, embed_dim) if hasattr(tower, "width") else None

    def forward(self, video):
        out = self.tower(video)
        return self.proj(out["pooled"]) if self.proj is not None else out["video_embedding"]


def row(name: str, params: int, macs: int, by_op: Counter) -> str:
    ops = ", ".join(f"{op} {n / 1e9:.3f}" for op, n in by_op.most_common())
    return (f"{name:<46} {params / 1e6:>8.2f}M {macs / 1e9:>11.3f} {TRAIN_FLOPS_PER_MAC * macs / 1e9:>13.2f}   "
            f"({ops})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--finetune_classes", type=int, default=400, help="head of the reference fine-tuning ViT; 0 = skip")
    p.add_argument("--num_classes", type=int, default=400, help="classes of a classify run's head (Kinetics-400)")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    frames, size, preset = cfg.data.num_frames, cfg.data.video_size, cfg.model.video.preset
    print(f"{args.config}: task {cfg.train.task}, preset {preset}, {frames}x{size}² per video (fvcore, "
          "multiply-adds; attention counted through an SDPA handle)")
    print(f"{'model':<46} {'params':>9} {'G MACs':>11} {'train GFLOPs':>13}   (G MACs by operator)")
    if cfg.train.task == "mae":
        mae = cfg.mae
        model = build_mae_pretrainer(preset, mae)
        macs, by_op = mae_macs_per_video(model, frames, size)
        masking = f"{mae.masking} {mae.mask_ratio:g}" + (f"/{mae.decoder_mask_ratio:g}" if mae.masking == "dual" else "")
        print(row(f"masked pretraining ({masking}, decoder {mae.decoder_depth})", param_count(model), macs, by_op))
        print(f"{'':<4}encoder {param_count(model.encoder) / 1e6:.2f}M, decoder + head "
              f"{(param_count(model) - param_count(model.encoder)) / 1e6:.2f}M")
        if args.finetune_classes > 0:
            finetune = FinetuneViT(preset, args.finetune_classes)
            macs, by_op = video_macs_per_video(finetune, frames, size)
            print(row(f"fine-tuning ViT (all tokens, {args.finetune_classes}-class head)", param_count(finetune),
                      macs, by_op))
    elif cfg.train.task == "classify":
        model = build_classifier(preset, args.num_classes)
        macs, by_op = video_macs_per_video(model, frames, size)
        print(row(f"classifier ({args.num_classes} classes, one clip)", param_count(model), macs, by_op))
        print(f"{'':<4}{param_count(model):,} parameters, {macs:,} multiply-adds")
    else:
        model = VideoEmbedding(build_video_tower(preset, cfg.model.embed_dim), cfg.model.embed_dim)
        macs, by_op = video_macs_per_video(model, frames, size)
        print(row("video tower + projection (one clip)", param_count(model), macs, by_op))
    return 0


if __name__ == "__main__":
    sys.exit(main())
