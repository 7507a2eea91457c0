"""The build_model contract over every preset: outputs, gradients, sizes, tokenizer and normalisation."""

import pytest
import torch

from mmpt_lite.config import ModelConfig, TextTowerConfig, VideoTowerConfig
from mmpt_lite.losses.milnce import milnce_loss
from mmpt_lite.models.build import VIDEO_PRESETS, VideoTextModel, build_model

VOCAB = ["cut", "the", "onion", "add", "salt", "stir", "pan", "water"]
CAPTIONS = ["cut the onion", "add salt", "stir the pan", "add water", "the onion", "salt the water"]
NUM_CANDIDATES = 3

# Video-tower parameter counts (S3D's include its fc 1024 -> 512). vit_s / vit_b plus a 400-class head give VideoMAE's published
# fine-tuning sizes (22,033,936 = 22.03M and 86,534,800 = 86.53M).
VIDEO_TOWER_PARAMS = {
    "s3d": 9_670_800, "s3d_nos2d": 9_649_872, "vit_tiny": 2_074_176, "vit_tiny_p8": 1_852_992, "vit_s": 21_879_936,
    "vit_b": 86_227_200, "vit_l": 303_860_736, "vit_h": 631_607_040, "vit_g": 1_011_610_752,
}
RUN_ON_CPU = ["s3d", "s3d_nos2d", "vit_tiny", "vit_tiny_p8", "vit_s"]


def small_cfg(preset: str, kind: str = "word2vec", embed_dim: int = 32, **text) -> ModelConfig:
    return ModelConfig(video=VideoTowerConfig(preset=preset), text=TextTowerConfig(kind=kind, **text),
                       embed_dim=embed_dim)


def assert_trains(model: VideoTextModel, video: torch.Tensor, captions: list[str]) -> dict[str, torch.Tensor]:
    """One forward/backward with MIL-NCE; every trainable parameter must get a finite gradient."""
    batch = video.shape[0]
    tokens = model.tokenizer(captions)
    grouped = {name: ids.view(batch, NUM_CANDIDATES, -1) for name, ids in tokens.items()}  # [B, K, L]
    model.train()
    out = model(video=video, text=grouped)
    loss = milnce_loss(out["video_embedding"], out["text_embedding"], num_candidates=NUM_CANDIDATES)["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    bad = [name for name, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert bad == []
    for value in out.values():
        assert torch.isfinite(value).all()
    return out


@pytest.mark.parametrize("preset", RUN_ON_CPU)
def test_preset_forward_backward(preset):
    torch.manual_seed(0)
    model = build_model(small_cfg(preset, hidden_dim=64), vocab=VOCAB, max_words=5)
    size = 64 if preset.startswith("s3d") else 32
    video = torch.rand(2, 3, 8, size, size)
    out = assert_trains(model, video, CAPTIONS)
    assert out["video_embedding"].shape == (2, 32)
    assert out["text_embedding"].shape == (2 * NUM_CANDIDATES, 32)
    width = VIDEO_PRESETS[preset].get("width", 1024)
    assert out["pooled"].shape == (2, width)
    if preset.startswith("s3d"):
        assert out["mixed_5c"].shape == (2, 1024) and "video_tokens" not in out
        assert model.video_mean == (0.0, 0.0, 0.0) and model.video_std == (1.0, 1.0, 1.0)
    else:
        patch = VIDEO_PRESETS[preset].get("patch_size", 16)
        assert out["video_tokens"].shape == (2, (8 // 2) * (size // patch) ** 2, width)  # tubelet 2 x patch²
        assert model.video_mean == (0.485, 0.456, 0.406) and model.video_std == (0.229, 0.224, 0.225)
    video_only = model(video=video)
    assert "text_embedding" not in video_only and "video_embedding" in video_only
    assert set(model(text=model.tokenizer(["cut"]))) == {"text_embedding"}


@pytest.mark.parametrize("preset", list(VIDEO_PRESETS))
def test_preset_sizes(preset):
    with torch.device("meta"):  # no memory, no init cost: the big presets only get counted
        model = build_model(small_cfg(preset, embed_dim=512, hidden_dim=64), vocab=VOCAB)
    assert sum(p.numel() for p in model.video_tower.parameters()) == VIDEO_TOWER_PARAMS[preset]
    assert set(dict(model.named_parameters())) == set(model.state_dict()) - {
        k for k in model.state_dict() if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def test_s3d_layout_uses_official_names_and_vit_layout_uses_tower_prefixes():
    s3d = build_model(small_cfg("s3d", hidden_dim=64), vocab=VOCAB)
    assert {"conv1.conv1.weight", "fc.weight", "text_module.fc1.weight"} <= set(s3d.state_dict())
    assert s3d.video_tower.fc is s3d.fc and s3d.text_tower is s3d.text_module
    vit = build_model(small_cfg("vit_tiny", hidden_dim=64), vocab=VOCAB)
    assert {"video_tower.patch_embed.proj.weight", "video_proj.weight", "text_tower.fc2.weight"} <= set(
        vit.state_dict())


def test_vit_with_the_bundled_transformer_text_tower_trains():
    torch.manual_seed(0)
    model = build_model(small_cfg("vit_tiny", kind="transformer"))
    assert_trains(model, torch.rand(2, 3, 4, 32, 32), CAPTIONS)


def test_freezing_a_tower_keeps_only_its_projection_trainable():
    cfg = small_cfg("s3d", hidden_dim=64)
    cfg.video.freeze = True
    cfg.text.freeze = True
    model = build_model(cfg, vocab=VOCAB)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"fc.weight", "fc.bias", "text_module.fc2.weight", "text_module.fc2.bias"}
    vit_cfg = small_cfg("vit_tiny", hidden_dim=64)
    vit_cfg.video.freeze = True
    vit = build_model(vit_cfg, vocab=VOCAB)
    assert {n for n, p in vit.named_parameters() if p.requires_grad and n.startswith("video")} == {
        "video_proj.weight", "video_proj.bias"}


def test_unknown_preset_lists_the_valid_choices():
    with pytest.raises(ValueError) as info:
        build_model(small_cfg("vit_xl"))
    assert "vit_xl" in str(info.value) and all(name in str(info.value) for name in VIDEO_PRESETS)


def test_max_token_pool_projects_every_token():
    torch.manual_seed(0)
    cfg = ModelConfig(video=VideoTowerConfig(preset="vit_tiny", pool="max"),
                      text=TextTowerConfig(kind="word2vec", vocab_size=len(VOCAB) + 1, word_dim=8, hidden_dim=16),
                      embed_dim=16)
    model = build_model(cfg, vocab=VOCAB, max_words=4)
    video = torch.randn(2, 3, 4, 32, 32)
    out = assert_trains(model, video, CAPTIONS)
    expected = model.video_proj(out["video_tokens"]).amax(dim=1)  # one object's tokens are not averaged away
    assert torch.allclose(out["video_embedding"], expected)
    assert not torch.allclose(out["video_embedding"], model.video_proj(out["pooled"]))
    with pytest.raises(ValueError, match="model.video.pool"):
        build_model(ModelConfig(video=VideoTowerConfig(preset="s3d", pool="max")), vocab=VOCAB)


def test_frozen_s3d_keeps_its_batchnorm_statistics():
    torch.manual_seed(0)
    cfg = small_cfg("s3d", hidden_dim=64)
    cfg.video.freeze = True
    model = build_model(cfg, vocab=VOCAB).train()
    stats = {n: b.clone() for n, b in model.named_buffers() if "running_mean" in n}
    assert stats and not model.video_tower.training
    out = model(video=torch.rand(2, 3, 8, 64, 64))
    out["video_embedding"].sum().backward()  # the projection (fc) still trains
    assert model.fc.weight.grad is not None
    assert all(torch.equal(b, stats[n]) for n, b in model.named_buffers() if n in stats)
    unfrozen = build_model(small_cfg("s3d", hidden_dim=64), vocab=VOCAB).train()
    unfrozen(video=torch.rand(2, 3, 8, 64, 64))
    assert any(not torch.equal(b, stats[n]) for n, b in unfrozen.named_buffers() if n in stats)
