"""Video classifiers for fine-tuning (``train.task: classify``): a video tower and a class head.

``build_classifier(preset, num_classes, ...)`` takes any video preset:

* ViT presets (``vit_*``): VideoMAE's fine-tuning network -- the encoder with ``fc_norm`` (token mean, then
  LayerNorm; no per-token norm), dropout, ``head`` Linear(width, classes) with trunc-normal(0.02) weights scaled
  by 0.001 (VideoMAE's ``init_scale``), stochastic depth rising linearly to ``drop_path``.
* S3D presets (``s3d``, ``s3d_nos2d``): S3D-G up to the pooled ``mixed_5c`` [B, 1024] (its joint-space
  projection ``fc`` is removed), dropout, ``head`` Linear(1024, classes) -- MIL-NCE's fine-tuning setup.
* ``x3d_s``: X3D-S with its own head (conv5, pool, 2048-d ``lin_5``, dropout, ``head.projection``).

State-dict keys: ``video_tower.*`` (the tower's own names, so ``model.video.init_from`` reads a classification
run like any other) and ``head.*`` (none for X3D, whose head is inside the tower). ``forward(video)`` with
video float [B, 3, T, H, W], normalised by ``video_mean``/``video_std`` -> {"logits": [B, C], "pooled": [B, F]}.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from mmpt_lite.models.build import VIDEO_PRESETS
from mmpt_lite.models.preprocess import TowerNormalised
from mmpt_lite.models.s3d import S3D
from mmpt_lite.models.vit import VideoViT
from mmpt_lite.models.x3d import x3d_s

# Presets only a classifier has (a tower with its own head); the VIDEO_PRESETS are valid too.
CLASSIFIER_PRESETS = {"x3d_s": x3d_s}


def classifier_presets() -> list[str]:
    return [*VIDEO_PRESETS, *CLASSIFIER_PRESETS]


class VideoClassifier(TowerNormalised, nn.Module):
    """A video tower and a linear class head (or a tower with its own head: ``head`` None).

    ``lr_layer(name)`` numbers the parameters by depth for layer-wise learning-rate decay (ViT towers:
    patch embedding 0, block i -> i + 1, fc_norm and head -> depth + 1, as BEiT/VideoMAE); None for towers
    without a layer order.
    """

    def __init__(self, video_tower: nn.Module, head: nn.Linear | None, dropout: float = 0.0, pool: str = "mean"):
        super().__init__()
        if pool not in ("mean", "max"):
            raise ValueError(f"model.video.pool: {pool!r} is not one of mean, max")
        if pool == "max" and not isinstance(video_tower, VideoViT):
            raise ValueError(f"model.video.pool: 'max' pools ViT tokens; {type(video_tower).__name__} pools itself")
        self.pool = pool
        self.video_tower = video_tower
        self.dropout = nn.Dropout(dropout)
        self.head = head
        self.num_classes = head.out_features if head is not None else video_tower.num_classes

    @property
    def num_lr_layers(self) -> int | None:
        """Layers of layer-wise lr decay (depth + 2 for a ViT), None when the tower has no layer order."""
        return len(self.video_tower.blocks) + 2 if isinstance(self.video_tower, VideoViT) else None

    def lr_layer(self, name: str) -> int:
        """Layer id of parameter ``name`` (a key of ``named_parameters()``) for layer-wise lr decay."""
        depth = len(self.video_tower.blocks)
        if name.startswith("video_tower.patch_embed."):
            return 0
        block = re.match(r"video_tower\.blocks\.(\d+)\.", name)
        return int(block.group(1)) + 1 if block else depth + 1

    def forward(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        """video [B, 3, T, H, W] -> {"logits": [B, num_classes], "pooled": [B, F] (the feature the head reads)}."""
        out = self.video_tower(video)
        if self.head is None:  # X3D: logits and its 2048-d feature come from its own head
            return {"logits": out["logits"], "pooled": out["pooled"]}
        pooled = out["pooled"]
        if self.pool == "max":  # each channel's largest token, then fc_norm: a small object is not averaged away
            pooled = self.video_tower.fc_norm(out["video_tokens"].amax(dim=1))
        return {"logits": self.head(self.dropout(pooled)), "pooled": pooled}


def _vit_head(width: int, num_classes: int) -> nn.Linear:
    head = nn.Linear(width, num_classes)
    nn.init.trunc_normal_(head.weight, std=0.02)  # VideoMAE: trunc_normal(0.02), then weight and bias x init_scale
    with torch.no_grad():
        head.weight.mul_(0.001)
    nn.init.zeros_(head.bias)
    return head


def build_classifier(preset: str, num_classes: int, *, drop_path: float = 0.0, dropout: float = 0.0,
                     attention: str = "sdpa", pool: str = "mean") -> VideoClassifier:
    """The fine-tuning network of ``preset`` with a ``num_classes``-way head; ValueError listing the valid names.

    ``pool`` (``model.video.pool``, ViT presets): "mean" = VideoMAE's token mean; "max" = each channel's maximum
    over the tokens, for objects that cover a few of many tokens (the synthetic sets at 64 px)."""
    if num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
    if preset in CLASSIFIER_PRESETS:
        if drop_path:
            raise ValueError(f"classify.drop_path: {preset} has no residual branches to drop; use 0")
        return VideoClassifier(CLASSIFIER_PRESETS[preset](num_classes=num_classes, dropout=dropout), None, pool=pool)
    if preset not in VIDEO_PRESETS:
        raise ValueError(f"model.video.preset: unknown preset {preset!r} (valid: {', '.join(classifier_presets())})")
    spec = dict(VIDEO_PRESETS[preset])
    if spec.pop("arch") == "s3d":
        if drop_path:
            raise ValueError(f"classify.drop_path: {preset} has no residual branches to drop; use 0")
        tower = S3D(**spec)
        tower.fc = nn.Identity()  # the joint-space projection; the head reads mixed_5c
        head = nn.Linear(1024, num_classes)
        return VideoClassifier(tower, head, dropout, pool)
    tower = VideoViT(**spec, fc_norm=True, attention=attention, drop_path=drop_path)
    return VideoClassifier(tower, _vit_head(tower.width, num_classes), dropout, pool)
