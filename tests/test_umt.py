"""UMT stage 1: token selection, the cosine loss, CLIP teacher targets, a tiny run and init_from of its student."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import launch_tiny
from test_init_from import milnce_model
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from mmpt_lite.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from mmpt_lite.config import ConfigError, MaeConfig, ModelConfig, RunConfig, UmtConfig, VideoTowerConfig
from mmpt_lite.models.init_from import init_video_tower
from mmpt_lite.models.mae import build_mae_pretrainer
from mmpt_lite.models.umt import (
    VitTeacher,
    build_umt_student,
    cosine_distill_loss,
    frame_index_to_clip,
    gather_frame_targets,
    load_teacher,
    select_tokens,
)
from mmpt_lite.models.vit import VideoViT
from mmpt_lite.train.tasks.umt import kept_per_frame

# A CLIP vision tower on vit_tiny_p8's grid at debug_tiny's 32²: 8-px patches, 4×4 tokens per frame.
CLIP_TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=32,
                 patch_size=8, projection_dim=24)


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip_tiny")
    torch.manual_seed(0)
    CLIPVisionModelWithProjection(CLIPVisionConfig(**CLIP_TINY)).save_pretrained(folder)
    return folder


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_selection_counts_distinct_and_zero_weight_never_chosen():
    attention = torch.rand(64, 196)
    attention[:, 7] = 0.0
    index = select_tokens(attention, kept_per_frame(196, 0.2), gen())
    assert kept_per_frame(196, 0.2) == 40 and index.shape == (64, 40)  # UMT: 40 of 196 per frame
    assert all(len(set(row.tolist())) == 40 for row in index) and (index.diff(dim=1) > 0).all()  # ascending, distinct
    assert not (index == 7).any()
    assert torch.equal(index, select_tokens(attention, 40, gen()))  # the generator fixes the draw


def test_selection_frequencies_follow_attention():
    weights = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])
    rows = 40_000
    first = select_tokens(weights.expand(rows, -1), 1, gen(1)).flatten()
    freq = torch.bincount(first, minlength=5).float() / rows
    assert torch.allclose(freq, weights / weights.sum(), atol=0.01)  # one draw: ∝ attention
    # Two draws without replacement: inclusion frequencies as torch.multinomial's successive sampling.
    pairs = select_tokens(weights.expand(rows, -1), 2, gen(2))
    reference = torch.multinomial(weights.expand(rows, -1), 2, replacement=False, generator=gen(3))
    ours = torch.bincount(pairs.flatten(), minlength=5).float() / rows
    theirs = torch.bincount(reference.flatten(), minlength=5).float() / rows
    assert ours[0] == 0 and torch.allclose(ours, theirs, atol=0.015)


def test_frame_ids_map_to_clip_tokens_and_targets_follow():
    index = torch.tensor([[0, 3], [1, 2], [2, 3], [0, 1]])  # B=2 clips of T=2 frames, 4 tokens per frame
    assert frame_index_to_clip(index, 2, 4).tolist() == [[0, 3, 5, 6], [2, 3, 4, 5]]
    targets = torch.randn(4, 3, 4, 5)  # [B·T, K, N, D]
    kept = gather_frame_targets(targets, index, 2)
    assert kept.shape == (2, 3, 4, 5)
    assert torch.equal(kept[1, 2, 3], targets[3, 2, 1])  # clip 1, layer 2, 4th kept token = frame 1's token 1


def test_cosine_loss_matches_direct_statement():
    student, target = torch.randn(2, 3, 7, 16), F.normalize(torch.randn(2, 3, 7, 16), dim=-1)
    cos = F.cosine_similarity(student, target, dim=-1)
    assert torch.allclose(cosine_distill_loss(student, target), (2 - 2 * cos).mean(), atol=1e-6)
    assert cosine_distill_loss(target * 3, target).abs() < 1e-6


def test_clip_teacher_targets_are_the_models_own_head(clip_folder):
    teacher = load_teacher("clip", str(clip_folder), 2)
    frames = torch.randn(3, 3, 32, 32)
    targets, attention = teacher(frames)
    assert targets.shape == (3, 2, 16, 24) and attention.shape == (3, 16)
    assert torch.allclose(targets.norm(dim=-1), torch.ones(3, 2, 16), atol=1e-5)
    hf = CLIPVisionModelWithProjection.from_pretrained(clip_folder, attn_implementation="eager").eval()
    with torch.no_grad():
        out = hf(pixel_values=frames, output_hidden_states=True, output_attentions=True)
        for k, hidden in enumerate(out.hidden_states[-2:]):  # the last 2 blocks' outputs
            direct = hf.visual_projection(hf.vision_model.post_layernorm(hidden[:, 1:]))
            assert torch.allclose(targets[:, k], F.normalize(direct, dim=-1), atol=1e-5)
        # The head applied is the model's own: on the last block's CLS it gives image_embeds.
        assert torch.allclose(teacher.project(out.hidden_states[-1][:, :1])[:, 0], out.image_embeds, atol=1e-5)
    assert torch.allclose(attention, out.attentions[-1][:, :, 0, 1:].mean(dim=1))
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.train().training


def test_vit_teacher_and_layer_counts():
    torch.manual_seed(0)
    teacher = VitTeacher(VideoViT(width=32, depth=3, num_heads=2, patch_size=8, tubelet_size=1), 2)
    targets, attention = teacher(torch.randn(2, 3, 32, 32))
    assert targets.shape == (2, 2, 16, 32) and torch.allclose(attention.sum(dim=1), torch.ones(2))
    with pytest.raises(ConfigError, match="umt.align_layers"):
        VitTeacher(VideoViT(width=32, depth=3, num_heads=2, patch_size=8, tubelet_size=1), 4)
    with pytest.raises(ConfigError, match="umt.align_layers"):
        build_umt_student("vit_tiny", 24, 6)  # 4 blocks
    with pytest.raises(ConfigError, match="umt.keep_ratio"):
        UmtConfig(keep_ratio=0.0)


def test_student_gradients_and_encoder_names():
    torch.manual_seed(0)
    student = build_umt_student("vit_tiny_p8", 24, 2)
    assert student.encoder.tubelet_size == 1
    keep = frame_index_to_clip(torch.tensor([[0, 5], [2, 9]] * 2), 2, 16)
    out = student(torch.randn(2, 3, 2, 32, 32), keep, F.normalize(torch.randn(2, 2, 4, 24), dim=-1))
    out["loss"].backward()
    for name, p in student.named_parameters():  # every parameter on the loss's path (DDP needs no unused ones)
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    keys = {k.removeprefix("encoder.") for k in student.state_dict() if k.startswith("encoder.")}
    assert keys == set(student.encoder.state_dict())


def test_tiny_run_and_init_from_into_milnce(tmp_path, clip_folder):
    out = tmp_path / "run"
    r = launch_tiny(["train.task=umt", f"umt.teacher={clip_folder}", "umt.align_layers=2",
                     "model.video.preset=vit_tiny_p8", f"data.root={tmp_path / 'how2-synth'}", "data.batch_size=2",
                     "train.max_steps=3", "train.ckpt_every=3", "train.peak_tflops=1", f"train.output_dir={out}"])
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3]
    assert all(np.isfinite(row["loss"]) and 0 < row["loss"] < 4 and row["mfu"] > 0 for row in rows)
    ckpt = load_checkpoint(latest_checkpoint(out))
    assert ckpt["train_state"]["task"] == {"drawn": 3}  # one selection draw per step, restored on resume
    assert not any(k.startswith("teacher") for k in ckpt["model"])  # the frozen teacher is not checkpointed
    encoder = {k.removeprefix("encoder."): v for k, v in ckpt["model"].items() if k.startswith("encoder.")}
    assert encoder["patch_embed.proj.weight"].shape == (192, 3, 1, 8, 8)
    model = milnce_model("vit_tiny_p8")  # tubelet 2: the student's kernel is inflated over time
    report = init_video_tower(model, out)
    assert "missing keys: none; unexpected keys: none" in report and "decoders x" in report
    assert "inflated from 1 to 2 frames" in report
    tower = model.video_tower.state_dict()
    assert torch.allclose(tower["patch_embed.proj.weight"], encoder["patch_embed.proj.weight"].repeat(1, 1, 2, 1, 1) / 2)
    assert torch.equal(tower["blocks.3.mlp.fc2.weight"], encoder["blocks.3.mlp.fc2.weight"])


def test_vit_teacher_from_a_masked_run(tmp_path):
    torch.manual_seed(0)
    mae = build_mae_pretrainer("vit_tiny_p8", MaeConfig())
    cfg = RunConfig(model=ModelConfig(video=VideoTowerConfig(preset="vit_tiny_p8")))
    save_checkpoint(tmp_path, 2, model_state=mae.state_dict(), train_state={"step": 2}, cfg=cfg)
    teacher = load_teacher("mmpt_vit", str(tmp_path), 4)
    assert teacher.patch_size == 8 and teacher.out_dim == 192 and teacher.vit.tubelet_size == 1
    # The tubelet-2 kernel summed over time: a frame embeds as the masked encoder embeds that frame repeated.
    frame = torch.randn(1, 3, 1, 32, 32)
    assert torch.allclose(teacher.vit.patch_embed(frame), mae.encoder.patch_embed(frame.repeat(1, 1, 2, 1, 1)), atol=1e-5)
    targets, attention = teacher(frame[:, :, 0])
    assert targets.shape == (1, 4, 16, 192) and attention.shape == (1, 16)
