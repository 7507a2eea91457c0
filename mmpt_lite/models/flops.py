"""Parameter and multiply-add counts (fvcore) of models as they are trained, for reports and MFU.

fvcore traces one forward pass and counts one multiply-add as one "flop". It has no handler for
``aten::scaled_dot_product_attention`` (it would silently count attention as zero), so one is
registered here: q·kᵀ and attn·v cost B·H·N·M·(d + d_v) multiply-adds. Softmax, GELU, adds and
gathers are not counted, as in the VideoMAE / V-SWIFT figures these numbers are compared with.
BatchNorm is not counted either: at inference it folds into the preceding convolution, and the published
convolutional figures (X3D-S 1.96 G, from SlowFast) leave it out, where fvcore's default would add 2 per
element (+3.5% for X3D-S).

Training FLOPs per video = 3 (forward + backward ≈ 2× forward) · 2 (FLOPs per multiply-add) · MACs.
Counting runs the model once where its parameters are (fvcore's tracer does not run on the meta device).
"""

from __future__ import annotations

import math
from collections import Counter

import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape
from torch import nn

from mmpt_lite.models.build import VIDEO_PRESETS
from mmpt_lite.models.mae import VideoMAEPretrainer
from mmpt_lite.models.vit import VideoViT

TRAIN_FLOPS_PER_MAC = 3 * 2


def sdpa_macs(inputs: list, outputs: list) -> int:
    """fvcore handle for aten::scaled_dot_product_attention: q [.., N, d], k [.., M, d], v [.., M, d_v]."""
    q, k, v = (get_shape(value) for value in inputs[:3])
    return math.prod(q[:-2]) * q[-2] * k[-2] * (q[-1] + v[-1])


def _not_counted(inputs: list, outputs: list) -> Counter:
    """fvcore handle for an op that costs nothing here (an empty count: the op is handled, not reported)."""
    return Counter()


def count_macs(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[int, Counter]:
    """Multiply-adds of ``module(*inputs)`` in total and per operator (e.g. linear, conv)."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            analysis = FlopCountAnalysis(module, inputs)
            analysis.set_op_handle("aten::scaled_dot_product_attention", sdpa_macs)
            analysis.set_op_handle("aten::batch_norm", _not_counted)
            analysis.unsupported_ops_warnings(False)
            analysis.uncalled_modules_warnings(False)
            return int(analysis.total()), Counter(analysis.by_operator())
    finally:
        module.train(was_training)


def param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class _Reconstruct(nn.Module):
    """Traceable view of a pretrainer: tensors in, predictions out (masks are inputs, not drawn)."""

    def __init__(self, model: VideoMAEPretrainer):
        super().__init__()
        self.model = model

    def forward(self, video: torch.Tensor, visible_index: torch.Tensor, decode_index: torch.Tensor) -> torch.Tensor:
        return self.model.reconstruct(video, visible_index, decode_index)


def mae_macs_per_video(model: VideoMAEPretrainer, num_frames: int, size: int) -> tuple[int, Counter]:
    """MACs of one masked-pretraining forward on a ``num_frames``×``size``² video with the model's own
    masking (token counts per video are fixed, so one video's count is exact)."""
    device = next(model.parameters()).device
    masks = model.draw_masks((1, 3, num_frames, size, size), torch.Generator(device).manual_seed(0))
    video = torch.zeros(1, 3, num_frames, size, size, device=device)
    return count_macs(_Reconstruct(model), (video, masks.visible_index, masks.decode_index))


class FinetuneViT(nn.Module):
    """The fine-tuning network these figures refer to: VideoViT with fc_norm (token mean, then
    LayerNorm) and a linear classification head over every token. [B, 3, T, H, W] -> [B, classes]."""

    def __init__(self, preset: str, num_classes: int = 400):
        super().__init__()
        spec = dict(VIDEO_PRESETS[preset])
        if spec.pop("arch") != "vit":
            raise ValueError(f"{preset!r} is not a ViT preset")
        self.encoder = VideoViT(fc_norm=True, **spec)
        self.head = nn.Linear(self.encoder.width, num_classes)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(video)["pooled"])


def video_macs_per_video(module: nn.Module, num_frames: int, size: int) -> tuple[int, Counter]:
    """MACs of ``module(video)`` for one ``num_frames``×``size``² video (all tokens)."""
    device = next(module.parameters()).device
    return count_macs(module, (torch.zeros(1, 3, num_frames, size, size, device=device),))
