"""Fine-tuning classifiers (models/classifier.py), layer-wise lr decay (train/optim.py), stochastic depth,
mixup/CutMix (data/mixup.py) and the soft-target loss (losses/classify.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmpt_lite.config import OptimConfig
from mmpt_lite.data.mixup import MixupSettings, cutmix_box, mix_video_batch, smoothed_one_hot
from mmpt_lite.losses.classify import soft_target_cross_entropy
from mmpt_lite.models.classifier import build_classifier
from mmpt_lite.models.vit import drop_path
from mmpt_lite.train.optim import build_optimizer, build_scheduler, layer_lr_scale


def test_vit_classifier_outputs_and_keys():
    model = build_classifier("vit_tiny", 7, drop_path=0.1, dropout=0.2)
    out = model(torch.randn(2, 3, 4, 32, 32))
    assert out["logits"].shape == (2, 7) and out["pooled"].shape == (2, 192)
    keys = model.state_dict().keys()
    assert "video_tower.fc_norm.weight" in keys and "head.weight" in keys
    assert not any(k.startswith("video_tower.norm.") for k in keys)  # fine-tuning ViT: fc_norm, no token norm
    # VideoMAE's head init: trunc-normal(0.02) scaled by 0.001 -> tiny initial logits
    assert model.head.weight.abs().max() < 1e-4 and model.head.weight.abs().max() > 0


def test_s3d_classifier_reads_mixed_5c():
    model = build_classifier("s3d", 5).eval()
    out = model(torch.rand(1, 3, 8, 64, 64))
    assert out["pooled"].shape == (1, 1024) and out["logits"].shape == (1, 5)
    assert not any(k.startswith("video_tower.fc.") for k in model.state_dict())  # joint-space projection removed


def test_unknown_preset_lists_choices():
    with pytest.raises(ValueError, match="x3d_s"):
        build_classifier("resnet50", 4)
    with pytest.raises(ValueError, match="drop_path"):
        build_classifier("s3d", 4, drop_path=0.1)


def test_drop_path_per_sample_and_identity_in_eval():
    x = torch.ones(4000, 3)
    out = drop_path(x, 0.25, training=True)
    rows = out[:, 0]
    assert torch.isclose(rows, torch.tensor(0.0)).logical_or(torch.isclose(rows, torch.tensor(1 / 0.75))).all()
    assert (out == out[:, :1]).all()  # a whole sample's branch is dropped or kept
    assert abs((rows == 0).float().mean().item() - 0.25) < 0.03
    assert torch.equal(drop_path(x, 0.25, training=False), x)
    model = build_classifier("vit_tiny", 3, drop_path=0.3)
    rates = [block.drop_path for block in model.video_tower.blocks]
    assert rates[0] == 0.0 and math.isclose(rates[-1], 0.3) and rates == sorted(rates)


def test_layer_decay_scales_each_layer():
    model = build_classifier("vit_tiny", 3)  # depth 4 -> layers 0..5
    cfg = OptimConfig(name="adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    optimizer = build_optimizer(cfg, [model])
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert math.isclose(lr_of[id(named["head.weight"])], 1e-3)
    assert math.isclose(lr_of[id(named["video_tower.fc_norm.weight"])], 1e-3)
    assert math.isclose(lr_of[id(named["video_tower.blocks.3.mlp.fc1.weight"])], 1e-3 * 0.5)
    assert math.isclose(lr_of[id(named["video_tower.blocks.0.attn.qkv.weight"])], 1e-3 * 0.5 ** 4)
    assert math.isclose(lr_of[id(named["video_tower.patch_embed.proj.weight"])], 1e-3 * 0.5 ** 5)
    decay_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert decay_of[id(named["video_tower.blocks.0.norm1.weight"])] == 0.0
    assert decay_of[id(named["video_tower.blocks.0.attn.qkv.weight"])] == 0.05
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(named)
    # the warmup + cosine schedule multiplies every group's own lr
    scheduler = build_scheduler(optimizer, OptimConfig(lr=1e-3, warmup_steps=4, layer_decay=0.5), 10)
    ratios = {g["lr"] / g["initial_lr"] for g in optimizer.param_groups}
    assert len({round(r, 12) for r in ratios}) == 1 and math.isclose(ratios.pop(), 0.25)
    optimizer.step()
    scheduler.step()
    assert all(math.isclose(g["lr"], g["initial_lr"] * 0.5) for g in optimizer.param_groups)


def test_layer_decay_needs_a_layer_order():
    with pytest.raises(ValueError, match="layer order"):
        layer_lr_scale(torch.nn.Linear(2, 2), "weight", 0.75)


def test_sgd_nesterov_no_decay_on_batchnorm():
    model = build_classifier("s3d", 4)
    optimizer = build_optimizer(OptimConfig(name="sgd", lr=0.1, weight_decay=5e-5, momentum=0.9), [model])
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["nesterov"]
    bn = model.video_tower.conv_2b.bn1.weight
    assert all(g["weight_decay"] == 0.0 for g in optimizer.param_groups if any(p is bn for p in g["params"]))


def test_smoothed_one_hot_and_loss_match_torch():
    labels = torch.tensor([0, 3, 2])
    targets = smoothed_one_hot(labels, 4, 0.1)
    assert torch.allclose(targets.sum(1), torch.ones(3))
    assert math.isclose(targets[1, 3].item(), 0.925, rel_tol=1e-6) and math.isclose(targets[1, 0].item(), 0.025,
                                                                                     rel_tol=1e-6)
    logits = torch.randn(3, 4)
    expected = F.cross_entropy(logits, labels, label_smoothing=0.1)
    assert torch.allclose(soft_target_cross_entropy(logits=logits, targets=targets), expected, atol=1e-6)


def test_mixup_blends_clips_and_targets():
    video = torch.randn(4, 3, 2, 8, 8)
    labels = torch.tensor([0, 1, 2, 3])
    settings = MixupSettings(mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.0)
    mixed, targets, lam = mix_video_batch(video, labels, 5, settings, np.random.default_rng(1))
    assert 0 < lam < 1
    assert torch.allclose(mixed, lam * video + (1 - lam) * video.flip(0))
    assert torch.allclose(targets[0, 0], torch.tensor(lam)) and torch.allclose(targets[0, 3], torch.tensor(1 - lam))
    assert torch.allclose(targets.sum(1), torch.ones(4))


def test_cutmix_pastes_one_box_in_every_frame():
    video = torch.arange(2.0)[:, None, None, None, None].expand(2, 3, 4, 16, 16).clone()
    labels = torch.tensor([0, 1])
    settings = MixupSettings(mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0)
    for seed in range(10):
        mixed, targets, lam = mix_video_batch(video, labels, 2, settings, np.random.default_rng(seed))
        pasted = (mixed[0] == 1.0)  # sample 0 received sample 1's pixels where the box is
        assert (pasted == pasted[:1, :1]).all()  # the same box in every channel and frame
        assert math.isclose(1 - pasted[0, 0].float().mean().item(), lam)  # lam = the area left unpasted
        assert math.isclose(targets[0, 0].item(), lam)
    top, bottom, left, right = cutmix_box(16, 16, 0.75, np.random.default_rng(0))
    assert 0 <= top <= bottom <= 16 and 0 <= left <= right <= 16


def test_mixup_off_or_skipped_gives_smoothed_labels():
    video, labels = torch.randn(2, 3, 2, 4, 4), torch.tensor([1, 0])
    for settings in (MixupSettings(mixup_alpha=0, cutmix_alpha=0), MixupSettings(prob=0.0)):
        mixed, targets, lam = mix_video_batch(video, labels, 3, settings, np.random.default_rng(0))
        assert mixed is video and lam == 1.0 and torch.equal(targets, smoothed_one_hot(labels, 3, 0.1))


@pytest.mark.parametrize("preset, shape", [("vit_tiny", (2, 3, 4, 32, 32)), ("vit_tiny_p8", (2, 3, 4, 32, 32)),
                                           ("s3d", (2, 3, 8, 64, 64)), ("s3d_nos2d", (2, 3, 8, 64, 64)),
                                           ("x3d_s", (2, 3, 4, 64, 64))])
def test_every_cpu_preset_trains(preset, shape):
    """The classifier contract: logits [B, C], every parameter gets a finite gradient from one step."""
    torch.manual_seed(0)
    model = build_classifier(preset, 6).train()
    out = model(torch.randn(*shape))
    assert out["logits"].shape == (2, 6) and out["pooled"].ndim == 2
    F.cross_entropy(out["logits"], torch.tensor([1, 4])).backward()
    if preset == "x3d_s":  # zero-init final BN gammas give the residual branches exactly zero gradient at init
        missing = [n for n, p in model.named_parameters() if p.grad is None]
    else:
        missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert len(model.video_mean) == 3 and len(model.video_std) == 3


@pytest.mark.parametrize("preset, params", [("vit_s", 22_033_936), ("vit_b", 86_534_800), ("x3d_s", 3_794_322)])
def test_published_finetuning_sizes(preset, params):
    # VideoMAE's fine-tuning ViT-S/B (22.03M / 86.53M) and SlowFast's X3D-S, each with a 400-class head
    assert sum(p.numel() for p in build_classifier(preset, 400).parameters()) == params


def test_max_pool_takes_each_channels_largest_token():
    torch.manual_seed(0)
    model = build_classifier("vit_tiny", 4, pool="max").eval()
    video = torch.randn(1, 3, 4, 32, 32)
    tokens = model.video_tower(video)["video_tokens"]
    out = model(video)
    assert torch.allclose(out["pooled"], model.video_tower.fc_norm(tokens.amax(dim=1)))
    assert torch.allclose(out["logits"], model.head(out["pooled"]))
    with pytest.raises(ValueError, match="pools ViT tokens"):
        build_classifier("x3d_s", 4, pool="max")
