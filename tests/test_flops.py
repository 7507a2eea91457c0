"""fvcore parameter and multiply-add counts against the published VideoMAE figures (16×224², v1 masking)."""

import pytest
import torch

from mmpt_lite.config import MaeConfig
from mmpt_lite.models.build import build_video_tower
from mmpt_lite.models.flops import (
    FinetuneViT,
    count_macs,
    mae_macs_per_video,
    param_count,
    video_macs_per_video,
)
from mmpt_lite.models.mae import build_mae_pretrainer

# (params, G multiply-adds) from formats-and-protocols.md section 8; 0.5% tolerance.
MAE_FIGURES = {"vit_s": (24.03e6, 11.557e9), "vit_b": (94.21e6, 35.482e9)}
FINETUNE_FIGURES = {"vit_s": (22.03e6, 56.95e9), "vit_b": (86.53e6, 180.49e9)}


def within(value: float, reference: float, tolerance: float = 0.005) -> bool:
    return abs(value - reference) <= tolerance * reference


def test_attention_is_counted():
    tower = build_video_tower("vit_tiny")  # 4 blocks, width 192, 3 heads
    macs, by_op = video_macs_per_video(tower, 4, 64)  # 2 x 4 x 4 = 32 tokens
    assert by_op["scaled_dot_product_attention"] == 4 * 2 * 192 * 32 * 32  # q·kᵀ + attn·v per block
    assert macs == sum(by_op.values())


def test_counting_restores_training_mode():
    model = torch.nn.Linear(3, 2).train()
    assert count_macs(model, (torch.zeros(4, 3),))[0] == 4 * 3 * 2 and model.training


@pytest.mark.parametrize("preset", ["vit_s", pytest.param("vit_b", marks=pytest.mark.slow)])
def test_mae_pretraining_figures(preset):
    model = build_mae_pretrainer(preset, MaeConfig(mask_ratio=0.9, masking="tube", decoder_depth=4))
    macs, _ = mae_macs_per_video(model, 16, 224)
    params, reference_macs = MAE_FIGURES[preset]
    assert within(param_count(model), params) and within(macs, reference_macs), (param_count(model), macs)


@pytest.mark.parametrize("preset", ["vit_s", pytest.param("vit_b", marks=pytest.mark.slow)])
def test_finetune_vit_figures(preset):
    model = FinetuneViT(preset, num_classes=400)
    macs, _ = video_macs_per_video(model, 16, 224)
    params, reference_macs = FINETUNE_FIGURES[preset]
    assert within(param_count(model), params) and within(macs, reference_macs), (param_count(model), macs)


def test_dual_masking_counts_fewer_decoder_tokens():
    tube = build_mae_pretrainer("vit_s", MaeConfig(masking="tube"))
    dual = build_mae_pretrainer("vit_s", MaeConfig(masking="dual"))
    dual.load_state_dict(tube.state_dict())
    assert mae_macs_per_video(dual, 16, 128)[0] < mae_macs_per_video(tube, 16, 128)[0]
