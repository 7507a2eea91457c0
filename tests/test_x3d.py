"""X3D-S: SlowFast's parameter count and multiply-adds, shapes, names, init, gradients, the classifier contract."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from mmpt_lite.models.x3d import X3D, X3DBlock, round_width, x3d_s

REPO = Path(__file__).resolve().parents[1]
X3D_S_PARAMS = 3_794_322  # SlowFast X3D-S, 400 classes
X3D_S_GMACS = 1.96  # published, 13×160²


@pytest.fixture(scope="module")
def model() -> X3D:
    torch.manual_seed(0)
    return x3d_s()


@pytest.fixture(scope="module")
def trained_step():
    """One training forward + backward at [2, 3, 13, 160, 160], with every block's zero-init gamma made
    non-zero first (at init the residual branches get exactly zero gradient, which would hide dead ones)."""
    torch.manual_seed(0)
    net = x3d_s()
    with torch.no_grad():
        for block in net.modules():
            if isinstance(block, X3DBlock):
                block.c_bn.weight.uniform_(0.5, 1.0)
    net.train()
    out = net(torch.randn(2, 3, 13, 160, 160))
    (out["logits"].square().mean() + out["pooled"].mean()).backward()
    return net, out


def test_round_width_is_slowfasts():
    # SE bottlenecks of the four stages' inner widths; 432/16 = 27 rounds to 24 < 0.9·27, so up to 32.
    assert [round_width(w, 1 / 16) for w in (54, 108, 216, 432)] == [8, 8, 16, 32]
    assert round_width(12, 2.0) == 24
    assert round_width(3, 1.0) == 8  # min_depth


def test_parameter_count_is_x3d_s(model):
    assert sum(p.numel() for p in model.parameters()) == X3D_S_PARAMS
    assert sum(p.numel() for p in model.head.projection.parameters()) == 2048 * 400 + 400


def test_macs_match_the_published_figure(model):
    """fvcore as mmpt_lite counts (BatchNorm left out: it folds into the convs) gives 1.963 G, the published
    1.96 G; and scripts/count_flops.py reports the exact figures for the X3D-S recipe."""
    pytest.importorskip("fvcore")
    from mmpt_lite.models.flops import video_macs_per_video

    total, by_op = video_macs_per_video(model, 13, 160)
    assert set(by_op) == {"conv", "linear"}
    assert by_op["linear"] == 2048 * 400
    assert abs(total / (X3D_S_GMACS * 1e9) - 1) < 0.005

    script = subprocess.run([sys.executable, "scripts/count_flops.py", "projects/x3d_s_kinetics.yaml"], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert script.returncode == 0, script.stderr[-2000:]
    assert f"{X3D_S_PARAMS:,} parameters, {total:,} multiply-adds" in script.stdout
    assert "13x160²" in script.stdout


def test_training_step_shapes_and_finite_gradients(trained_step):
    net, out = trained_step
    assert out["logits"].shape == (2, 400) and out["pooled"].shape == (2, 2048)
    assert (out["pooled"] >= 0).all()  # after lin_5's ReLU, before dropout
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} gets no gradient"


def test_zero_init_gamma_makes_blocks_start_as_identity_branches(model):
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm3d):
            expected = 0.0 if name.endswith(".c_bn") else 1.0
            assert torch.all(m.weight == expected), name
            assert torch.all(m.bias == 0), name
            assert m.eps == 1e-5 and m.momentum == 0.1
    assert sum(name.endswith(".c_bn") for name, _ in model.named_modules()) == 3 + 5 + 11 + 7


def test_init_is_slowfasts():
    torch.manual_seed(0)
    net = x3d_s()
    proj = net.head.projection
    assert proj.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert torch.all(proj.bias == 0)
    # kaiming normal (fvcore's c2_msra_fill), std = sqrt(2 / fan_out) with PyTorch's fan_out = out_channels ·
    # kernel volume -- groups are not divided out, so channel-wise convs start small, exactly as in SlowFast.
    lin5 = net.head.lin_5.weight  # [2048, 432, 1, 1, 1]: fan_out = 2048
    assert lin5.std().item() == pytest.approx(math.sqrt(2 / 2048), rel=0.05)
    conv_b = net.stages[3].blocks[0].b.weight  # [432, 1, 3, 3, 3] channel-wise: fan_out = 432 · 27
    assert conv_b.std().item() == pytest.approx(math.sqrt(2 / (432 * 27)), rel=0.05)
    se = net.stages[3].blocks[0].se
    assert torch.all(se.fc1.bias == 0) and torch.all(se.fc2.bias == 0)


def test_state_dict_names_follow_slowfast(model):
    keys = set(model.state_dict())
    for key in ("stem.conv_xy.weight", "stem.conv_t.weight", "stem.bn.running_mean",
                "stages.0.blocks.0.branch1.weight", "stages.0.blocks.0.branch1_bn.weight",
                "stages.0.blocks.0.se.fc1.bias", "stages.3.blocks.6.se.fc2.weight",
                "stages.2.blocks.10.c_bn.weight", "head.conv_5.weight", "head.conv_5_bn.running_var",
                "head.lin_5.weight", "head.projection.weight", "head.projection.bias"):
        assert key in keys, key
    assert model.stem.conv_t.groups == 24 and model.stem.conv_t.kernel_size == (5, 1, 1)
    assert model.head.lin_5.bias is None and model.head.lin_5.weight.shape == (2048, 432, 1, 1, 1)
    assert model.projection is model.head.projection


@pytest.mark.parametrize("stage, depth, width, inner", [(0, 3, 24, 54), (1, 5, 48, 108), (2, 11, 96, 216),
                                                       (3, 7, 192, 432)])
def test_stage_layout(model, stage, depth, width, inner):
    blocks = model.stages[stage].blocks
    assert len(blocks) == depth
    for i, block in enumerate(blocks):
        assert (block.se is not None) == (i % 2 == 0)  # SE on blocks 0, 2, 4, ...
        assert (block.branch1 is not None) == (i == 0)  # shortcut conv only where the shape changes
        assert block.b.groups == inner and block.b.stride == ((1, 2, 2) if i == 0 else (1, 1, 1))
        assert block.a.out_channels == inner and block.c.out_channels == width
        for conv in (block.a, block.b, block.c):
            assert conv.bias is None
    assert blocks[0].branch1.stride == (1, 2, 2)


def test_feature_map_shapes_at_13x160(model):
    shapes = []
    hooks = [model.stem.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape)))]
    hooks += [s.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape))) for s in model.stages]
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, 13, 160, 160))
    finally:
        for h in hooks:
            h.remove()
    assert shapes == [(1, 24, 13, 80, 80), (1, 24, 13, 40, 40), (1, 48, 13, 20, 20), (1, 96, 13, 10, 10),
                      (1, 192, 13, 5, 5)]


@pytest.mark.parametrize("shape", [(1, 3, 1, 64, 64), (2, 3, 4, 96, 128), (1, 3, 16, 182, 182)])
def test_any_clip_length_and_size(model, shape):
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(shape))
    assert out["logits"].shape == (shape[0], 400) and torch.isfinite(out["logits"]).all()


def test_rejects_non_video_input(model):
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        model(torch.zeros(1, 3, 160, 160))
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        model(torch.zeros(1, 1, 4, 64, 64))


def test_class_count_changes_only_the_projection(model):
    other = x3d_s(num_classes=17)
    assert other.num_classes == 17 and model.num_classes == 400
    ours, theirs = model.state_dict(), other.state_dict()
    assert ours.keys() == theirs.keys()
    differing = {k for k in ours if ours[k].shape != theirs[k].shape}
    assert differing == {"head.projection.weight", "head.projection.bias"}
    assert theirs["head.projection.weight"].shape == (17, 2048)


def test_eval_is_deterministic_and_dropout_only_in_training():
    torch.manual_seed(0)
    net = x3d_s(num_classes=5, dropout=0.5)
    video = torch.randn(2, 3, 4, 64, 64)
    net.eval()
    stats = net.stem.bn.running_mean.clone()
    with torch.no_grad():
        first, second = net(video), net(video)
    torch.testing.assert_close(first["logits"], second["logits"], rtol=0, atol=0)
    torch.testing.assert_close(net.stem.bn.running_mean, stats, rtol=0, atol=0)  # eval leaves BN stats alone
    # Training mode: dropout acts after ``pooled`` (so it is unchanged by it) and BN stats move.
    net.train()
    with torch.no_grad():
        torch.manual_seed(1)
        a = net(video)
        torch.manual_seed(2)
        b = net(video)
    torch.testing.assert_close(a["pooled"], b["pooled"])
    assert not torch.equal(a["logits"], b["logits"])
    assert not torch.equal(net.stem.bn.running_mean, stats)
    assert isinstance(x3d_s(dropout=0.0).head.dropout, nn.Identity)


def test_channels_last_3d_gives_the_same_output(model):
    model.eval()
    video = torch.randn(1, 3, 4, 64, 64)
    with torch.no_grad():
        ref = model(video)["logits"]
        cl = model.to(memory_format=torch.channels_last_3d)
        got = cl(video.to(memory_format=torch.channels_last_3d))["logits"]
        model.to(memory_format=torch.contiguous_format)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_contract_attributes(model):
    assert X3D.mean == (0.45, 0.45, 0.45) and X3D.std == (0.225, 0.225, 0.225)
    assert model.mean == X3D.mean and model.std == X3D.std


def test_importable_without_fvcore():
    code = ("import sys; sys.modules['fvcore'] = None\n"
            "from mmpt_lite.models.x3d import x3d_s\n"
            "assert sum(p.numel() for p in x3d_s().parameters()) == 3794322")
    subprocess.run([sys.executable, "-c", code], check=True)
