"""transformers VideoMAE (random weights, built from a config: no download) -> mmpt_lite, outputs compared."""

import pytest
import torch
from transformers import VideoMAEConfig, VideoMAEForPreTraining, VideoMAEForVideoClassification, VideoMAEModel

from mmpt_lite.models.convert_hf import convert_hf_videomae
from mmpt_lite.models.mae import MaeMasks, VideoMAEPretrainer
from mmpt_lite.models.vit import VideoViT

SMALL = dict(image_size=32, patch_size=16, num_channels=3, num_frames=4, tubelet_size=2, hidden_size=64,
             num_hidden_layers=2, num_attention_heads=4, intermediate_size=256, layer_norm_eps=1e-6,
             decoder_hidden_size=32, decoder_num_hidden_layers=2, decoder_num_attention_heads=2,
             decoder_intermediate_size=128, norm_pix_loss=True)


def small_vit(**kwargs) -> VideoViT:
    return VideoViT(width=64, depth=2, num_heads=4, **kwargs)


def randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial values everywhere (HF zero-initialises biases; zeros would hide a wrong mapping)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return model.eval()


def hf_video(video: torch.Tensor) -> torch.Tensor:
    return video.permute(0, 2, 1, 3, 4)  # HF takes [B, T, C, H, W]


def assert_close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    rel = ((ours - theirs).norm() / theirs.norm()).item()
    assert rel <= 1e-4, rel


@pytest.mark.parametrize("qv_bias", [True, False])
def test_videomae_model_tokens_match(qv_bias):
    hf = randomise(VideoMAEModel(VideoMAEConfig(**SMALL, use_mean_pooling=False, qv_bias=qv_bias)))
    state, unused = convert_hf_videomae(hf.state_dict())
    ours = small_vit().eval()
    result = ours.load_state_dict({k.removeprefix("encoder."): v for k, v in state.items()}, strict=True)
    assert not result.missing_keys and not result.unexpected_keys and unused == []
    video = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        assert_close(ours.forward_tokens(video), hf(hf_video(video)).last_hidden_state)


def test_videomae_pretraining_logits_and_loss_match():
    hf = randomise(VideoMAEForPreTraining(VideoMAEConfig(**SMALL, use_mean_pooling=False)))
    state, unused = convert_hf_videomae(hf.state_dict())
    ours = VideoMAEPretrainer(small_vit(), decoder_width=32, decoder_depth=2, decoder_heads=2, mask_ratio=0.5).eval()
    ours.load_state_dict(state, strict=True)
    assert unused == []
    video = torch.randn(2, 3, 4, 32, 32)
    # 8 tokens (2 x 2 x 2); the same number hidden per sample, as HF requires.
    hidden = torch.tensor([[1, 0, 0, 1, 1, 0, 0, 1], [0, 1, 1, 0, 0, 1, 1, 0]], dtype=torch.bool)
    masks = MaeMasks(visible_index=torch.stack([(~h).nonzero()[:, 0] for h in hidden]),
                     decode_index=torch.stack([h.nonzero()[:, 0] for h in hidden]), loss_weight=torch.ones(2, 4))
    with torch.no_grad():
        theirs = hf(hf_video(video), bool_masked_pos=hidden)
        mine = ours(video, masks=masks)
    assert_close(mine["pred"], theirs.logits)
    assert abs(mine["loss"].item() - theirs.loss.item()) <= 1e-4 * theirs.loss.item()
    assert torch.equal(mine["mask"], hidden)


def test_videomae_classification_pooled_matches():
    hf = randomise(VideoMAEForVideoClassification(VideoMAEConfig(**SMALL, use_mean_pooling=True, num_labels=5)))
    state, unused = convert_hf_videomae(hf.state_dict())
    assert sorted(unused) == ["classifier.bias", "classifier.weight"]
    ours = small_vit(fc_norm=True).eval()
    ours.load_state_dict({k.removeprefix("encoder."): v for k, v in state.items()}, strict=True)
    video = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        logits = torch.nn.functional.linear(ours(video)["pooled"], hf.classifier.weight, hf.classifier.bias)
        assert_close(logits, hf(hf_video(video)).logits)
