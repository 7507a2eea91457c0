"""X3D (Feichtenhofer 2020) as SlowFast / pytorchvideo define it, with ``x3d_s`` for X3D-S.

Architecture facts this file reproduces (SlowFast ``X3D``, ``X3DTransform``, ``X3DHead``):

* Input ``[B, 3, T, H, W]`` normalised with the Kinetics mean/std below. X3D-S is trained on
  13 frames at sampling rate 6, 160² crops (tested at 182²); the network itself takes any T, H, W
  (every pooling is global), and H, W divisible by 32 keep every stride-2 stage exact.
* Stem: a 1×3×3 stride-(1, 2, 2) conv (3 -> 24) then a channel-wise 5×1×1 temporal conv, BN, ReLU.
* Stages res2..res5 of [3, 5, 11, 7] residual blocks, widths 24/48/96/192, inner width 2.25×;
  the first block of each stage halves H and W (in its channel-wise 3×3×3 conv and its shortcut).
* Block: 1×1×1 -> BN -> ReLU -> channel-wise 3×3×3 -> BN -> [squeeze-excitation on blocks
  0, 2, 4, ...] -> Swish -> 1×1×1 -> BN (gamma zero-initialised, so each block starts as
  identity); a 1×1×1 conv + BN shortcut where the shape changes; ReLU after the sum.
* Head: 1×1×1 conv 192 -> 432, BN, ReLU, global average pool, 1×1×1 conv 432 -> 2048 (no bias),
  ReLU, dropout, Linear 2048 -> classes. SlowFast applies softmax at eval; here the head always
  returns logits (the package's classifier contract).
* Every conv except the SE ones is bias-free; BN eps 1e-5, momentum 0.1. Init: kaiming normal
  (fan_out, ReLU) for convs, BN gamma 1 / beta 0, the projection normal(std 0.01) with zero bias.

X3D-S (400 classes): 3,794,322 parameters; 1.963 G multiply-adds per 13×160² clip (conv + linear, as
``mmpt_lite.models.flops`` counts: BatchNorm folds into the convs at inference and is left out, as in the
published 1.96 G). fvcore counts neither adaptive_avg_pool3d, the SE product, Swish nor the residual adds.
Module names follow SlowFast's (``stem.conv_xy``, ``stages.N.blocks.M.a``/``b``/``c``/``se.fc1``,
``branch1``, ``head.conv_5``/``lin_5``/``projection``) with ``stages`` and ``blocks`` as lists.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# SlowFast's Kinetics normalisation of [0, 1] RGB.
KINETICS_MEAN = (0.45, 0.45, 0.45)
KINETICS_STD = (0.225, 0.225, 0.225)


def round_width(width: float, multiplier: float, min_depth: int = 8, divisor: int = 8) -> int:
    """SlowFast's channel rounding: ``width·multiplier`` to a multiple of ``divisor`` (at least
    ``min_depth``), rounded up one step where rounding to nearest lost more than 10%."""
    width *= multiplier
    rounded = max(min_depth, int(width + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * width:
        rounded += divisor
    return int(rounded)


def _bn(channels: int) -> nn.BatchNorm3d:
    return nn.BatchNorm3d(channels, eps=1e-5, momentum=0.1)


class SqueezeExcitation(nn.Module):
    """[B, C, T, H, W] -> same shape, each channel scaled by sigmoid(fc2(relu(fc1(mean_THW(x)))))."""

    def __init__(self, channels: int, ratio: float = 1 / 16):
        super().__init__()
        bottleneck = round_width(channels, ratio)
        self.avg_pool = nn.AdaptiveAvgPool3d(1)
        self.fc1 = nn.Conv3d(channels, bottleneck, 1, bias=True)
        self.fc2 = nn.Conv3d(bottleneck, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.sigmoid(self.fc2(F.relu(self.fc1(self.avg_pool(x)))))
        return x * scale


class X3DStem(nn.Module):
    """[B, 3, T, H, W] -> [B, width, T, H/2, W/2]: spatial 1×3×3 conv, channel-wise temporal 5×1×1 conv."""

    def __init__(self, width: int, temporal_kernel: int = 5):
        super().__init__()
        self.conv_xy = nn.Conv3d(3, width, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1), bias=False)
        self.conv_t = nn.Conv3d(width, width, (temporal_kernel, 1, 1), padding=(temporal_kernel // 2, 0, 0),
                                groups=width, bias=False)
        self.bn = _bn(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv_t(self.conv_xy(x))), inplace=True)


class X3DBlock(nn.Module):
    """[B, C_in, T, H, W] -> [B, C_out, T, H/s, W/s]: X3D bottleneck (see the module docstring)."""

    def __init__(self, in_channels: int, out_channels: int, inner_channels: int, spatial_stride: int,
                 use_se: bool, se_ratio: float = 1 / 16):
        super().__init__()
        stride = (1, spatial_stride, spatial_stride)
        if in_channels != out_channels or spatial_stride != 1:
            self.branch1 = nn.Conv3d(in_channels, out_channels, 1, stride=stride, bias=False)
            self.branch1_bn = _bn(out_channels)
        else:
            self.branch1 = self.branch1_bn = None
        self.a = nn.Conv3d(in_channels, inner_channels, 1, bias=False)
        self.a_bn = _bn(inner_channels)
        # Channel-wise (groups = channels) 3×3×3: X3D's cheap spatiotemporal mixing; it carries the stride.
        self.b = nn.Conv3d(inner_channels, inner_channels, 3, stride=stride, padding=1, groups=inner_channels,
                           bias=False)
        self.b_bn = _bn(inner_channels)
        self.se = SqueezeExcitation(inner_channels, se_ratio) if use_se else None
        self.c = nn.Conv3d(inner_channels, out_channels, 1, bias=False)
        self.c_bn = _bn(out_channels)
        self.c_bn.zero_init_gamma = True  # read by X3D.reset_parameters: the residual branch starts at zero

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.branch1 is None else self.branch1_bn(self.branch1(x))
        y = F.relu(self.a_bn(self.a(x)), inplace=True)
        y = self.b_bn(self.b(y))
        if self.se is not None:
            y = self.se(y)
        y = self.c_bn(self.c(F.silu(y)))  # silu(x) = x·sigmoid(x), SlowFast's Swish
        return F.relu(shortcut + y, inplace=True)


class X3DStage(nn.Module):
    """``depth`` blocks; the first changes width and halves H, W. SE on blocks 0, 2, 4, ..."""

    def __init__(self, in_channels: int, out_channels: int, inner_channels: int, depth: int, se_ratio: float):
        super().__init__()
        self.blocks = nn.ModuleList(
            X3DBlock(in_channels if i == 0 else out_channels, out_channels, inner_channels,
                     spatial_stride=2 if i == 0 else 1, use_se=i % 2 == 0, se_ratio=se_ratio)
            for i in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class X3DHead(nn.Module):
    """[B, C, T, H, W] -> (pooled [B, hidden], logits [B, classes]); pooled is before dropout."""

    def __init__(self, in_channels: int, inner_channels: int, hidden: int, num_classes: int, dropout: float):
        super().__init__()
        self.conv_5 = nn.Conv3d(in_channels, inner_channels, 1, bias=False)
        self.conv_5_bn = _bn(inner_channels)
        # Global, not a fixed kernel: any T, H, W (SlowFast's test-time fully convolutional mode).
        self.avg_pool = nn.AdaptiveAvgPool3d(1)
        # A 1×1×1 conv on the pooled [B, C, 1, 1, 1] feature, as SlowFast (same weight shape and init).
        self.lin_5 = nn.Conv3d(inner_channels, hidden, 1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.projection = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.relu(self.conv_5_bn(self.conv_5(x)), inplace=True)
        pooled = F.relu(self.lin_5(self.avg_pool(x))).flatten(1)
        return pooled, self.projection(self.dropout(pooled))


class X3D(nn.Module):
    """X3D classifier: video [B, 3, T, H, W] (normalised) -> ``{"logits": [B, classes], "pooled": [B, hidden]}``."""

    mean = KINETICS_MEAN
    std = KINETICS_STD

    def __init__(self, num_classes: int = 400, stem_width: int = 24, widths: tuple[int, ...] = (24, 48, 96, 192),
                 depths: tuple[int, ...] = (3, 5, 11, 7), bottleneck_factor: float = 2.25,
                 head_inner: int = 432, head_hidden: int = 2048, se_ratio: float = 1 / 16, dropout: float = 0.5):
        super().__init__()
        if len(widths) != len(depths):
            raise ValueError(f"widths {widths} and depths {depths} must have one entry per stage")
        self.num_classes = num_classes
        self.stem = X3DStem(stem_width)
        stages, in_channels = [], stem_width
        for width, depth in zip(widths, depths, strict=True):
            stages.append(X3DStage(in_channels, width, int(bottleneck_factor * width), depth, se_ratio))
            in_channels = width
        self.stages = nn.ModuleList(stages)
        self.head = X3DHead(in_channels, head_inner, head_hidden, num_classes, dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """SlowFast's init: kaiming normal (fan_out) convs, BN 1/0 (0 gamma on each block's last BN),
        projection normal(0.01) and zero bias."""
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.constant_(m.weight, 0.0 if getattr(m, "zero_init_gamma", False) else 1.0)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def projection(self) -> nn.Linear:
        """The classification layer (``head.projection``), replaced or re-initialised for fine-tuning."""
        return self.head.projection

    def forward_features(self, video: torch.Tensor) -> torch.Tensor:
        """[B, 3, T, H, W] -> res5 feature map [B, 192, T, H/32, W/32] (X3D-S widths)."""
        if video.dim() != 5 or video.shape[1] != 3:
            raise ValueError(f"X3D takes video [B, 3, T, H, W], got shape {tuple(video.shape)}")
        x = self.stem(video)
        for stage in self.stages:
            x = stage(x)
        return x

    def forward(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled, logits = self.head(self.forward_features(video))
        return {"logits": logits, "pooled": pooled}


def x3d_s(num_classes: int = 400, dropout: float = 0.5) -> X3D:
    """X3D-S: 13 frames × 160² (rate 6), 3.79 M parameters at 400 classes, 1.96 G multiply-adds per clip."""
    return X3D(num_classes=num_classes, dropout=dropout)
