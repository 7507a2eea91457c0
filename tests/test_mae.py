"""Masked video pretraining: masks, targets, loss, gradients, and a CPU run through locallaunch.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from mmpt_lite.checkpoint import latest_checkpoint, load_checkpoint
from mmpt_lite.config import MaeConfig, load_config
from mmpt_lite.data.shards import ShardedVideoStore
from mmpt_lite.data.video_sets import MaeClipDataset
from mmpt_lite.models.mae import (
    VideoMAEPretrainer,
    build_mae_pretrainer,
    dual_masks,
    masked_mse,
    running_cell_keep,
    tube_masks,
    tubelet_targets,
)
from mmpt_lite.models.vit import VideoViT
from mmpt_lite.train.tasks.base import StepSeeds

REPO = Path(__file__).resolve().parents[1]
GRID_16x224 = (8, 14, 14)  # 16 frames, 224², tubelet 2, patch 16


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tiny_pretrainer(masking: str = "tube") -> VideoMAEPretrainer:
    torch.manual_seed(0)
    return VideoMAEPretrainer(VideoViT(width=32, depth=2, num_heads=2), decoder_width=16, decoder_depth=2,
                              decoder_heads=2, mask_ratio=0.75, masking=masking)


def test_tube_masking_counts_and_shared_spatial_mask():
    masks = tube_masks(3, GRID_16x224, 0.9, gen(), torch.device("cpu"))
    assert masks.visible_index.shape == (3, 160) and masks.decode_index.shape == (3, 1408)  # VideoMAE v1 count
    for b in range(3):
        visible, decoded = set(masks.visible_index[b].tolist()), set(masks.decode_index[b].tolist())
        assert not visible & decoded and len(visible | decoded) == 1568
        per_slice = masks.visible_index[b].view(8, 20) % 196
        assert (per_slice == per_slice[0]).all()  # one spatial mask for every temporal slice
    assert not torch.equal(masks.visible_index[0], masks.visible_index[1])  # drawn per sample
    assert torch.equal(masks.visible_index, tube_masks(3, GRID_16x224, 0.9, gen(), torch.device("cpu")).visible_index)
    assert (masks.loss_weight == 1).all()


def test_running_cell_keeps_half_and_shifts_every_slice():
    keep = running_cell_keep(4, GRID_16x224, 0.5, gen(), torch.device("cpu")).view(4, 8, 14, 14)
    assert (keep.sum(dim=(2, 3)) == 98).all()  # 50% of each slice
    cells = keep.view(4, 8, 7, 2, 7, 2).permute(0, 1, 2, 4, 3, 5)
    assert (cells == cells[:, :, :1, :1]).all()  # one 2x2 pattern tiled over the slice
    assert not (keep[:, 1:] == keep[:, :-1]).all(dim=(2, 3)).any()  # it moves every slice
    assert (keep.sum(dim=1) == 4).all()  # each position reconstructed in half of the slices


def test_dual_masks_loss_weight_is_hidden_and_kept():
    masks = dual_masks(2, GRID_16x224, 0.9, 0.5, gen(), torch.device("cpu"))
    assert masks.visible_index.shape == (2, 160) and masks.decode_index.shape == (2, 784)
    for b in range(2):
        visible = set(masks.visible_index[b].tolist())
        expected = [0.0 if i in visible else 1.0 for i in masks.decode_index[b].tolist()]
        assert masks.loss_weight[b].tolist() == expected
    assert 0 < masks.loss_weight.sum() < masks.loss_weight.numel()  # some decoded positions are visible


def test_tubelet_target_normalisation_matches_direct_computation():
    video = torch.rand(2, 3, 4, 32, 48)
    targets = tubelet_targets(video, tubelet=2, patch=16, normalize=True)
    assert targets.shape == (2, 2 * 2 * 3, 2 * 16 * 16 * 3)
    b, t, y, x = 1, 1, 0, 2  # token index t-major: t·(2·3) + y·3 + x
    cube = video[b, :, 2 * t:2 * t + 2, 16 * y:16 * y + 16, 16 * x:16 * x + 16]  # [C, 2, 16, 16]
    values = cube.permute(1, 2, 3, 0).reshape(-1, 3)  # (tubelet, patch, patch) x channel
    direct = (values - values.mean(0)) / (values.std(0, unbiased=True) + 1e-6)
    torch.testing.assert_close(targets[b, t * 6 + y * 3 + x], direct.reshape(-1), rtol=1e-5, atol=1e-5)
    raw = tubelet_targets(video, tubelet=2, patch=16, normalize=False)
    torch.testing.assert_close(raw[b, t * 6 + y * 3 + x], values.reshape(-1))


def test_loss_counts_only_tokens_hidden_from_the_encoder():
    model = tiny_pretrainer("dual")
    video = torch.randn(2, 3, 4, 64, 64)
    out = model(video, generator=gen(3))
    weight = out["loss_weight"]
    assert 0 < weight.sum() < weight.numel()
    per_token = (out["pred"] - out["target"]).pow(2).mean(-1)
    torch.testing.assert_close(out["loss"], per_token[weight > 0].mean())
    (grad,) = torch.autograd.grad(out["loss"], out["pred"])
    assert (grad[weight == 0] == 0).all() and (grad[weight > 0] != 0).any()
    hidden = out["mask"].gather(1, out["decode_index"])
    assert torch.equal(hidden, weight > 0)
    assert masked_mse(out["pred"], out["target"], torch.zeros_like(weight)).item() == 0.0


def test_gradient_reaches_every_parameter():
    for masking in ("tube", "dual"):
        model = tiny_pretrainer(masking)
        model(torch.randn(2, 3, 4, 64, 64), generator=gen(1))["loss"].backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, (masking, name)


def test_presets_and_state_dict_names():
    model = build_mae_pretrainer("vit_s", MaeConfig())
    assert sum(p.numel() for p in model.parameters()) == 24_029_376  # VideoMAE S/16, decoder depth 4: 24.03M
    keys = model.state_dict().keys()
    assert {k.removeprefix("encoder.") for k in keys if k.startswith("encoder.")} == set(model.encoder.state_dict())
    assert {"encoder_to_decoder.weight", "mask_token", "decoder.head.weight", "decoder.blocks.3.attn.qkv.weight"} <= set(keys)


def test_mask_seeds_resume_the_same_stream():
    seeds = StepSeeds(seed=7, rank=0)
    first = [seeds.next_generator(torch.device("cpu")).initial_seed() for _ in range(3)]
    state = seeds.state_dict()
    later = seeds.next_generator(torch.device("cpu")).initial_seed()
    resumed = StepSeeds(seed=7, rank=0)
    resumed.load_state_dict(state)
    assert resumed.next_generator(torch.device("cpu")).initial_seed() == later
    assert len(set(first + [later])) == 4
    assert StepSeeds(seed=7, rank=1).next_generator(torch.device("cpu")).initial_seed() != first[0]


def test_cpu_run_through_locallaunch(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "locallaunch.py", "projects/debug_tiny.yaml", "--jobtype", "local_single"]
    for o in ["train.task=mae", f"data.root={tmp_path / 'how2-synth'}", "data.batch_size=2", "train.max_steps=3",
              "train.ckpt_every=3", "train.peak_tflops=1", f"train.output_dir={out}"]:
        cmd += ["--set", o]
    r = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3]
    assert all(np.isfinite(row["loss"]) and row["mfu"] > 0 for row in rows)
    ckpt = load_checkpoint(latest_checkpoint(out))
    assert ckpt["meta"]["step"] == 3 and ckpt["train_state"]["task"] == {"drawn": 3}  # the mask-seed count
    assert any(k.startswith("encoder.blocks.") for k in ckpt["model"])
    # The dataset is a pure function of (video, seed): uint8 clips of the configured size.
    store = ShardedVideoStore(load_config(out / "config.yaml").data.shard_root)
    dataset = MaeClipDataset(store, num_frames=4, stride=2, video_size=32)
    a, b = dataset[(0, 11)], dataset[(0, 11)]
    assert a["video"].shape == (4, 32, 32, 3) and a["video"].dtype == torch.uint8
    assert torch.equal(a["video"], b["video"]) and "text" not in a  # video only
