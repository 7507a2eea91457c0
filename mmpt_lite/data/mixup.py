"""Mixup and CutMix on video batches (timm's batch mode, as VideoMAE fine-tuning uses it).

A batch is mixed with itself reversed (sample i with sample B-1-i): mixup blends whole clips, CutMix pastes
one box from the partner clip, the same box in every frame. The targets are the label-smoothed one-hot
vectors mixed with the same weight, where CutMix's weight is the box's true area after clipping to the frame.
Every random choice comes from the ``numpy.random.Generator`` passed in (drawn per step by the task).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class MixupSettings:
    mixup_alpha: float = 0.8  # Beta(alpha, alpha); 0 = no mixup
    cutmix_alpha: float = 1.0  # Beta(alpha, alpha); 0 = no CutMix
    prob: float = 1.0  # probability that a batch is mixed at all
    switch_prob: float = 0.5  # with both on: probability of CutMix instead of mixup
    label_smoothing: float = 0.1

    @property
    def enabled(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)


def smoothed_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """int64 [B] -> float [B, C]: 1 - smoothing + smoothing/C at the label, smoothing/C elsewhere (timm)."""
    off = smoothing / num_classes
    targets = torch.full((labels.shape[0], num_classes), off, device=labels.device)
    return targets.scatter_(1, labels[:, None], 1.0 - smoothing + off)


def cutmix_box(height: int, width: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of a box of area (1 - lam)·H·W (before clipping) at a uniform centre."""
    ratio = np.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
    top, bottom = np.clip(cy - cut_h // 2, 0, height), np.clip(cy + cut_h // 2, 0, height)
    left, right = np.clip(cx - cut_w // 2, 0, width), np.clip(cx + cut_w // 2, 0, width)
    return int(top), int(bottom), int(left), int(right)


def mix_video_batch(video: torch.Tensor, labels: torch.Tensor, num_classes: int, settings: MixupSettings,
                    rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mix a batch: video float [B, C, T, H, W], labels int64 [B] -> (mixed video, soft targets [B, classes],
    lam = the weight of each sample's own label). Unmixed batches (probability 1 - prob) get lam 1."""
    targets = smoothed_one_hot(labels, num_classes, settings.label_smoothing)
    if not settings.enabled or rng.random() >= settings.prob:
        return video, targets, 1.0
    use_cutmix = settings.cutmix_alpha > 0 and (settings.mixup_alpha == 0 or rng.random() < settings.switch_prob)
    partner = video.flip(0)
    if use_cutmix:
        lam = float(rng.beta(settings.cutmix_alpha, settings.cutmix_alpha))
        height, width = video.shape[-2:]
        top, bottom, left, right = cutmix_box(height, width, lam, rng)
        video = video.clone()
        video[..., top:bottom, left:right] = partner[..., top:bottom, left:right]
        lam = 1.0 - (bottom - top) * (right - left) / (height * width)  # the area actually pasted
    else:
        lam = float(rng.beta(settings.mixup_alpha, settings.mixup_alpha))
        video = video * lam + partner * (1.0 - lam)
    return video, targets * lam + targets.flip(0) * (1.0 - lam), lam
