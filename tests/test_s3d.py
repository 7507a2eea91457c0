"""S3D-G: the official checkpoint's names/shapes, stem geometry, forward (both file formats: test_eval_checkpoints)."""

import json
from pathlib import Path

import pytest
import torch

from mmpt_lite.config import ModelConfig, TextTowerConfig, VideoTowerConfig
from mmpt_lite.models.build import build_model
from mmpt_lite.models.s3d import MaxPool3dSamePadding, space_to_depth, uses_space_to_depth

# Names and shapes of the 537 entries of the official s3d_howto100m.pth (no weights).
OFFICIAL_SHAPES = Path(__file__).parent / "data" / "s3d_howto100m_state_dict.json"


def official_shapes() -> dict[str, list[int]]:
    return json.loads(OFFICIAL_SHAPES.read_text())


def random_state_dict(shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """A stand-in for the official file: every key with its shape, random values."""
    gen = torch.Generator().manual_seed(0)
    return {k: torch.tensor(3) if k.endswith("num_batches_tracked") else torch.randn(shape, generator=gen)
            for k, shape in shapes.items()}


@pytest.fixture(scope="module")
def official_model():
    cfg = ModelConfig(video=VideoTowerConfig(preset="s3d"), text=TextTowerConfig(kind="word2vec"))
    return build_model(cfg)  # no vocabulary: 66,250 rows like the official table


def test_state_dict_has_exactly_the_official_names_and_shapes(official_model):
    shapes = official_shapes()
    assert len(shapes) == 537
    ours = {k: list(v.shape) for k, v in official_model.state_dict().items()}
    assert ours == shapes


def test_official_format_loads_strictly(official_model):
    state = random_state_dict(official_shapes())
    assert uses_space_to_depth(state)
    official_model.load_state_dict(state, strict=True)
    torch.testing.assert_close(official_model.mixed_5c.gating_b3.fc.bias, state["mixed_5c.gating_b3.fc.bias"])
    torch.testing.assert_close(official_model.text_tower.word_embd.weight, state["text_module.word_embd.weight"])


def test_space_to_depth_channel_order_is_dt_dh_dw_c():
    video = torch.arange(2 * 3 * 2 * 4 * 6, dtype=torch.float32).reshape(2, 3, 2, 4, 6)
    packed = space_to_depth(video)
    assert packed.shape == (2, 24, 1, 2, 3)
    for dt, dh, dw, c in [(0, 0, 0, 0), (1, 0, 1, 2), (0, 1, 1, 1), (1, 1, 0, 0)]:
        channel = ((dt * 2 + dh) * 2 + dw) * 3 + c
        torch.testing.assert_close(packed[:, channel, 0, 1, 2], video[:, c, dt, 2 + dh, 4 + dw])
    with pytest.raises(ValueError, match="even"):
        space_to_depth(torch.zeros(1, 3, 3, 4, 4))


def test_same_padding_max_pools_pad_at_the_end_then_ceil():
    pool = MaxPool3dSamePadding((1, 3, 3), (1, 2, 2))  # pads 0 before, 1 after on H and W
    x = torch.zeros(1, 1, 1, 4, 4)
    x[..., 3, 3] = 5.0
    out = pool(x)
    assert out.shape == (1, 1, 1, 2, 2) and out[0, 0, 0, 1, 1] == 5.0 and out.sum() == 5.0
    assert MaxPool3dSamePadding((3, 3, 3), (2, 2, 2))(torch.zeros(1, 1, 8, 28, 28)).shape[2:] == (4, 14, 14)
    assert MaxPool3dSamePadding((2, 2, 2), (2, 2, 2))(torch.zeros(1, 1, 4, 7, 7)).shape[2:] == (2, 4, 4)


def test_forward_2x3x16x112x112_gives_the_three_outputs():
    model = build_model(ModelConfig(video=VideoTowerConfig(preset="s3d")), vocab=["cut", "the", "onion"], max_words=16)
    grids = []
    model.mixed_5c.register_forward_hook(lambda module, inputs, output: grids.append(output.shape[2:]))
    model.eval()
    with torch.no_grad():
        out = model(video=torch.rand(2, 3, 16, 112, 112), text=model.tokenizer(["Cut the onion", "the onion"]))
    assert out["mixed_5c"].shape == (2, 1024)
    assert out["video_embedding"].shape == (2, 512)
    assert out["text_embedding"].shape == (2, 512)
    assert grids == [(2, 4, 4)]  # T/8, ceil(H/32), ceil(W/32)
    for value in out.values():
        assert torch.isfinite(value).all()
