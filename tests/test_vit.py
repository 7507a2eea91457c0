"""Video ViT: VideoMAE names, position table, q/v-only biases, token subsets, pooling variants."""

import math

import pytest
import torch

from mmpt_lite.models.vit import IMAGENET_MEAN, IMAGENET_STD, Attention, VideoViT, sinusoid_table


@pytest.fixture(scope="module")
def tiny_vit():
    torch.manual_seed(0)
    return VideoViT(width=48, depth=2, num_heads=3).eval()


def test_state_dict_names_follow_videomae():
    keys = set(VideoViT(width=24, depth=1, num_heads=2).state_dict())
    assert keys == {
        "patch_embed.proj.weight", "patch_embed.proj.bias",
        "blocks.0.norm1.weight", "blocks.0.norm1.bias",
        "blocks.0.attn.qkv.weight", "blocks.0.attn.q_bias", "blocks.0.attn.v_bias",
        "blocks.0.attn.proj.weight", "blocks.0.attn.proj.bias",
        "blocks.0.norm2.weight", "blocks.0.norm2.bias",
        "blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc1.bias", "blocks.0.mlp.fc2.weight", "blocks.0.mlp.fc2.bias",
        "norm.weight", "norm.bias",
    }  # no position table: it is fixed, as in VideoMAE
    finetune = set(VideoViT(width=24, depth=1, num_heads=2, fc_norm=True).state_dict())
    assert {"fc_norm.weight", "fc_norm.bias"} <= finetune and "norm.weight" not in finetune
    assert VideoViT.mean == IMAGENET_MEAN and VideoViT.std == IMAGENET_STD


def test_sinusoid_table_matches_the_videomae_formula():
    table = sinusoid_table(7, 10)
    for pos in range(7):
        for j in range(10):
            angle = pos / 10000 ** (2 * (j // 2) / 10)
            expected = math.sin(angle) if j % 2 == 0 else math.cos(angle)
            assert abs(table[pos, j].item() - expected) < 1e-6


def test_attention_has_q_and_v_bias_but_no_k_bias():
    torch.manual_seed(1)
    attn = Attention(dim=8, num_heads=2)
    with torch.no_grad():
        attn.q_bias.normal_()
        attn.v_bias.normal_()
    x = torch.randn(2, 5, 8)
    w_q, w_k, w_v = attn.qkv.weight.chunk(3)
    q = (x @ w_q.t() + attn.q_bias).view(2, 5, 2, 4).transpose(1, 2)
    k = (x @ w_k.t()).view(2, 5, 2, 4).transpose(1, 2)
    v = (x @ w_v.t() + attn.v_bias).view(2, 5, 2, 4).transpose(1, 2)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(4), dim=-1)
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(2, 5, 8))
    torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)
    assert attn.qkv.bias is None


def test_init_is_xavier_uniform_for_linear_layers():
    model = VideoViT(width=64, depth=1, num_heads=4)
    fc1 = model.blocks[0].mlp.fc1
    bound = math.sqrt(6 / (fc1.in_features + fc1.out_features))
    assert fc1.weight.abs().max() <= bound and fc1.weight.abs().max() > 0.9 * bound
    assert fc1.bias.abs().max() == 0


def test_forward_shapes_and_pooling(tiny_vit):
    video = torch.randn(2, 3, 8, 32, 48)
    with torch.no_grad():
        out = tiny_vit(video)
    assert tiny_vit.token_grid(video.shape) == (4, 2, 3)
    assert out["video_tokens"].shape == (2, 24, 48)
    torch.testing.assert_close(out["pooled"], out["video_tokens"].mean(dim=1))


def test_token_subset_encodes_only_the_visible_tokens(tiny_vit):
    video = torch.randn(2, 3, 4, 32, 32)  # 2·2·2 = 8 tokens
    keep = torch.tensor([[0, 3, 5], [7, 1, 2]])
    with torch.no_grad():
        full = tiny_vit.forward_tokens(video)
        everything = tiny_vit.forward_tokens(video, keep_index=torch.arange(8).expand(2, 8))
        subset = tiny_vit.forward_tokens(video, keep_index=keep)
        reordered = tiny_vit.forward_tokens(video, keep_index=keep.flip(1))
    torch.testing.assert_close(everything, full)
    assert subset.shape == (2, 3, 48)
    # Tokens keep their own positions: encoding the same subset in another order permutes the output.
    torch.testing.assert_close(reordered, subset.flip(1), atol=1e-5, rtol=1e-5)
    # ... and dropping tokens changes what the others attend to.
    assert not torch.allclose(subset[0, 0], full[0, 0], atol=1e-4)


def test_finetune_variant_applies_fc_norm_after_the_mean():
    model = VideoViT(width=24, depth=1, num_heads=2, fc_norm=True).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 2, 16, 16))
    torch.testing.assert_close(out["pooled"], model.fc_norm(out["video_tokens"].mean(dim=1)))


def test_input_that_does_not_tile_is_rejected(tiny_vit):
    with pytest.raises(ValueError, match="tubelets"):
        tiny_vit(torch.randn(1, 3, 3, 32, 32))
