"""uint8 video from the data layer -> the float tensor a video tower reads.

The loaders hand over uint8 frames (cheap to move between processes and to the device); the
conversion to the model's input runs on the device, once, here.
"""

from __future__ import annotations

import torch
from torch import nn


def video_to_model_input(video: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 [B, T, H, W, 3] on the device -> float [B, 3, T, H, W]: ([0, 1] - mean) / std per channel."""
    x = video.permute(0, 4, 1, 2, 3).float().div_(255.0)
    return (x - mean.view(1, 3, 1, 1, 1)) / std.view(1, 3, 1, 1, 1)


class TowerNormalised:
    """Mixin for a model whose input normalisation is its video tower's: ``video_mean`` / ``video_std`` (3 floats
    each, applied to [0, 1] RGB) are the ``mean`` / ``std`` of the submodule named by ``normalising_tower``
    (S3D: 0 / 1; ViT: ImageNet; X3D: Kinetics), which :class:`VideoInput` reads."""

    normalising_tower = "video_tower"

    @property
    def video_mean(self) -> tuple[float, float, float]:
        return getattr(self, self.normalising_tower).mean

    @property
    def video_std(self) -> tuple[float, float, float]:
        return getattr(self, self.normalising_tower).std


class VideoInput:
    """The conversion for one model on one device: ``VideoInput(model, device)(uint8 [B, T, H, W, 3])``.

    The model's ``video_mean``/``video_std`` (3 floats each) give the normalisation; a model without
    them gets plain [0, 1] input.
    """

    def __init__(self, model: nn.Module, device: torch.device):
        self.device = device
        self.mean = torch.tensor(getattr(model, "video_mean", (0.0, 0.0, 0.0)), device=device, dtype=torch.float32)
        self.std = torch.tensor(getattr(model, "video_std", (1.0, 1.0, 1.0)), device=device, dtype=torch.float32)

    def __call__(self, video: torch.Tensor) -> torch.Tensor:
        """uint8 [B, T, H, W, 3] (any device) -> float [B, 3, T, H, W] on ``self.device``."""
        return video_to_model_input(video.to(self.device, non_blocking=True), self.mean, self.std)
