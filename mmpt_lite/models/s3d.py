"""S3D-G, the MIL-NCE video network, with the layout of the official ``s3d_howto100m.pth``.

Module and parameter names equal the official checkpoint's (``conv1.conv1.weight``,
``mixed_3b.conv_b1_b.bn2.running_mean``, ``mixed_5c.gating_b3.fc.bias``, ``fc.weight``...), so
its state dict loads with ``strict=True``. The word2vec text branch that ships in the same file
(``text_module.*``) is :class:`mmpt_lite.models.text.Word2VecTextTower`; ``build_model`` puts
both side by side under the official names (see ``mmpt_lite.models.build``).

Architecture facts this file reproduces (Xie et al. 2018, Miech et al. 2020):

* Input ``[B, 3, T, H, W]`` RGB in [0, 1], no mean/std normalisation.
* Official checkpoint: 3-D space-to-depth (2x2x2 blocks -> 24 channels), conv1 kernel 2x4x4 with
  padding (1, 2, 2), then the first element of T, H and W is cropped (this reproduces the
  TF "SAME" padding of the TPU model). MIL-NCE training-repo checkpoints: plain 3x7x7 stride-2 conv.
* Every convolution is bias-free and followed by BatchNorm3d (eps 1e-5) and ReLU; 3x3x3 kernels
  are separable (1x3x3 spatial then 3x1x1 temporal).
* Max-pools pad with zeros by the static TF "SAME" amounts, then pool with ``ceil_mode``.
* Self-gating (``x * sigmoid(fc(mean_THW(x)))``) after conv_2c and on every inception branch.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

# (1x1 branch, 3x3 reduce, 3x3, 3x3 reduce, 3x3, pool-projection) output channels per block.
INCEPTION_WIDTHS: dict[str, tuple[int, int, int, int, int, int]] = {
    "mixed_3b": (64, 96, 128, 16, 32, 32),
    "mixed_3c": (128, 128, 192, 32, 96, 64),
    "mixed_4b": (192, 96, 208, 16, 48, 64),
    "mixed_4c": (160, 112, 224, 24, 64, 64),
    "mixed_4d": (128, 128, 256, 24, 64, 64),
    "mixed_4e": (112, 144, 288, 32, 64, 64),
    "mixed_4f": (256, 160, 320, 32, 128, 128),
    "mixed_5b": (256, 160, 320, 32, 128, 128),
    "mixed_5c": (384, 192, 384, 48, 128, 128),
}


class ConvBNReLU3d(nn.Module):
    """Bias-free Conv3d + BatchNorm3d + ReLU; ``separable`` splits a k×k×k kernel in two.

    Separable: ``conv1``/``bn1`` is the 1×k×k spatial part and ``conv2``/``bn2`` the k×1×1
    temporal part (stride 1 and "same" padding, the only way S3D uses them).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int, int],
                 stride: int | tuple[int, int, int] = 1, padding: int | tuple[int, int, int] = 0,
                 separable: bool = False):
        super().__init__()
        self.separable = separable
        if separable:
            k_t, k_h, k_w = kernel_size
            self.conv1 = nn.Conv3d(in_channels, out_channels, (1, k_h, k_w), padding=(0, k_h // 2, k_w // 2), bias=False)
            self.bn1 = nn.BatchNorm3d(out_channels)
            self.conv2 = nn.Conv3d(out_channels, out_channels, (k_t, 1, 1), padding=(k_t // 2, 0, 0), bias=False)
            self.bn2 = nn.BatchNorm3d(out_channels)
        else:
            self.conv1 = nn.Conv3d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
            self.bn1 = nn.BatchNorm3d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        if self.separable:
            x = F.relu(self.bn2(self.conv2(x)), inplace=True)
        return x


class SelfGating(nn.Module):
    """S3D-G feature gating: scale each channel by sigmoid(fc(its mean over T, H, W))."""

    def __init__(self, channels: int):
        super().__init__()
        self.fc = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = torch.sigmoid(self.fc(x.mean(dim=(2, 3, 4))))
        return x * weights[:, :, None, None, None]


class MaxPool3dSamePadding(nn.Module):
    """Max-pool that pads like TensorFlow's "SAME" (static amounts, extra on the end), then ceil_mode.

    The pad amount per axis is ``max(kernel - stride, 0)`` split floor/ceil, independent of the
    input size, exactly as the PyTorch port of the TF model did; zero padding is harmless because
    every pooled tensor comes out of a ReLU or a gating (>= 0).
    """

    def __init__(self, kernel_size: tuple[int, int, int], stride: tuple[int, int, int]):
        super().__init__()
        pads = []
        for k, s in zip(reversed(kernel_size), reversed(stride), strict=True):  # F.pad wants W, H, T
            total = max(k - s, 0)
            pads += [total // 2, total - total // 2]
        self.padding = tuple(pads)
        self.pool = nn.MaxPool3d(kernel_size, stride, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(F.pad(x, self.padding))


class InceptionBlock(nn.Module):
    """Four gated branches concatenated: 1×1 | 1×1→3×3 | 1×1→3×3 | maxpool→1×1 (3×3 = separable 3×3×3)."""

    def __init__(self, in_channels: int, widths: tuple[int, int, int, int, int, int]):
        super().__init__()
        b0, b1_reduce, b1, b2_reduce, b2, b3 = widths
        self.conv_b0 = ConvBNReLU3d(in_channels, b0, (1, 1, 1))
        self.conv_b1_a = ConvBNReLU3d(in_channels, b1_reduce, (1, 1, 1))
        self.conv_b1_b = ConvBNReLU3d(b1_reduce, b1, (3, 3, 3), separable=True)
        self.conv_b2_a = ConvBNReLU3d(in_channels, b2_reduce, (1, 1, 1))
        self.conv_b2_b = ConvBNReLU3d(b2_reduce, b2, (3, 3, 3), separable=True)
        self.maxpool_b3 = nn.MaxPool3d(3, stride=1, padding=1)
        self.conv_b3_b = ConvBNReLU3d(in_channels, b3, (1, 1, 1))
        self.gating_b0 = SelfGating(b0)
        self.gating_b1 = SelfGating(b1)
        self.gating_b2 = SelfGating(b2)
        self.gating_b3 = SelfGating(b3)
        self.out_channels = b0 + b1 + b2 + b3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b0 = self.gating_b0(self.conv_b0(x))
        b1 = self.gating_b1(self.conv_b1_b(self.conv_b1_a(x)))
        b2 = self.gating_b2(self.conv_b2_b(self.conv_b2_a(x)))
        b3 = self.gating_b3(self.conv_b3_b(self.maxpool_b3(x)))
        return torch.cat((b0, b1, b2, b3), dim=1)


def space_to_depth(video: torch.Tensor) -> torch.Tensor:
    """[B, C, T, H, W] -> [B, 8C, T/2, H/2, W/2]; channel order (dt, dh, dw, c) as the TPU model."""
    b, c, t, h, w = video.shape
    if t % 2 or h % 2 or w % 2:
        raise ValueError(f"S3D with space-to-depth needs even T, H, W; got T={t}, H={h}, W={w}")
    x = video.reshape(b, c, t // 2, 2, h // 2, 2, w // 2, 2)
    x = x.permute(0, 3, 5, 7, 1, 2, 4, 6)
    return x.reshape(b, 8 * c, t // 2, h // 2, w // 2)


class S3D(nn.Module):
    """S3D-G video tower: ``[B, 3, T, H, W]`` in [0, 1] -> ``mixed_5c`` [B, 1024], ``video_embedding`` [B, D].

    ``space_to_depth=True`` is the official ``s3d_howto100m.pth`` layout (conv1 64×24×2×4×4);
    ``False`` is the MIL-NCE training repo's (conv1 64×3×3×7×7). ``fc`` (1024 -> ``embed_dim``)
    is the projection into the joint video-text space.
    """

    # Inputs are [0, 1] RGB with no mean/std normalisation (the official preprocessing).
    mean = (0.0, 0.0, 0.0)
    std = (1.0, 1.0, 1.0)

    def __init__(self, embed_dim: int = 512, space_to_depth: bool = True):
        super().__init__()
        self.space_to_depth = space_to_depth
        if space_to_depth:
            self.conv1 = ConvBNReLU3d(24, 64, (2, 4, 4), stride=1, padding=(1, 2, 2))
        else:
            self.conv1 = ConvBNReLU3d(3, 64, (3, 7, 7), stride=2, padding=(1, 3, 3))
        self.maxpool_2a = MaxPool3dSamePadding((1, 3, 3), (1, 2, 2))
        self.conv_2b = ConvBNReLU3d(64, 64, (1, 1, 1))
        self.conv_2c = ConvBNReLU3d(64, 192, (3, 3, 3), separable=True)
        self.gating = SelfGating(192)
        self.maxpool_3a = MaxPool3dSamePadding((1, 3, 3), (1, 2, 2))
        self.mixed_3b = InceptionBlock(192, INCEPTION_WIDTHS["mixed_3b"])
        self.mixed_3c = InceptionBlock(self.mixed_3b.out_channels, INCEPTION_WIDTHS["mixed_3c"])
        self.maxpool_4a = MaxPool3dSamePadding((3, 3, 3), (2, 2, 2))
        self.mixed_4b = InceptionBlock(self.mixed_3c.out_channels, INCEPTION_WIDTHS["mixed_4b"])
        self.mixed_4c = InceptionBlock(self.mixed_4b.out_channels, INCEPTION_WIDTHS["mixed_4c"])
        self.mixed_4d = InceptionBlock(self.mixed_4c.out_channels, INCEPTION_WIDTHS["mixed_4d"])
        self.mixed_4e = InceptionBlock(self.mixed_4d.out_channels, INCEPTION_WIDTHS["mixed_4e"])
        self.mixed_4f = InceptionBlock(self.mixed_4e.out_channels, INCEPTION_WIDTHS["mixed_4f"])
        self.maxpool_5a = MaxPool3dSamePadding((2, 2, 2), (2, 2, 2))
        self.mixed_5b = InceptionBlock(self.mixed_4f.out_channels, INCEPTION_WIDTHS["mixed_5b"])
        self.mixed_5c = InceptionBlock(self.mixed_5b.out_channels, INCEPTION_WIDTHS["mixed_5c"])
        self.fc = nn.Linear(self.mixed_5c.out_channels, embed_dim)

    @property
    def projection(self) -> nn.Module:
        """The layer into the joint space (kept trainable when the backbone is frozen)."""
        return self.fc

    def forward(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        """``video`` [B, 3, T, H, W] -> {"mixed_5c": [B, 1024], "pooled": same, "video_embedding": [B, D]}."""
        x = video
        if self.space_to_depth:
            x = self.conv1(space_to_depth(x))
            x = x[:, :, 1:, 1:, 1:]  # with the (1, 2, 2) padding this equals TF "SAME" on the 2x4x4 kernel
        else:
            x = self.conv1(x)
        x = self.maxpool_2a(x)
        x = self.gating(self.conv_2c(self.conv_2b(x)))
        x = self.maxpool_3a(x)
        x = self.mixed_3c(self.mixed_3b(x))
        x = self.maxpool_4a(x)
        for block in (self.mixed_4b, self.mixed_4c, self.mixed_4d, self.mixed_4e, self.mixed_4f):
            x = block(x)
        x = self.maxpool_5a(x)
        x = self.mixed_5c(self.mixed_5b(x))
        mixed_5c = x.mean(dim=(2, 3, 4))
        return {"mixed_5c": mixed_5c, "pooled": mixed_5c, "video_embedding": self.fc(mixed_5c)}


def uses_space_to_depth(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True for the official layout (conv1 has 24 = 8·3 input channels), False for 3."""
    return state_dict["conv1.conv1.weight"].shape[1] == 24

