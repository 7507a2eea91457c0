"""train.task classify end to end on the tiny synthetic SSv2-format set: fine-tuning from a masked-pretraining
run with multi-view evaluation, two ranks, and an exact resume after kill -9 (mixup draws included)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from conftest import launch_tiny, sigkill_after_checkpoint
from safetensors.torch import load_file

from mmpt_lite.checkpoint import latest_checkpoint

# The tiny corpus's SSv2 set: 3 classes, one training and one validation video each; batches of 2 clips.
SSV2 = ["train.task=classify", "classify.dataset=ssv2", "classify.flip=false", "data.batch_size=2"]


@pytest.fixture(scope="module")
def masked_run(tmp_path_factory):
    """A 2-step masked-pretraining run on the tiny corpus's SSv2 set (also generates the corpus)."""
    root = tmp_path_factory.mktemp("classify")
    r = launch_tiny([f"data.root={root / 'corpus'}", f"train.output_dir={root / 'mae'}", "train.task=mae",
                     "train.max_steps=2"])
    assert r.returncode == 0, r.stderr[-3000:]
    return root


def test_finetune_from_masked_run_evaluates_multiview(masked_run, tmp_path):
    out = tmp_path / "ft"
    r = launch_tiny([*SSV2, f"data.root={masked_run / 'corpus'}", f"train.output_dir={out}", "train.max_steps=4",
                     f"model.video.init_from={masked_run / 'mae'}", "eval.enabled=true"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "fine-tuning on ssv2 (segments sampling)" in r.stdout.splitlines()[0]
    assert "missing keys: fc_norm.weight, fc_norm.bias" in r.stderr  # the encoder report names what it did not fill
    final = json.loads((out / "eval_final.json").read_text())
    assert final["num_listed"] == 3 and final["num_evaluated"] == 3 and final["num_views"] == 2 * 3
    assert 0 <= final["top1"] <= 100 and final["top5"] == 100.0  # 3 classes: top-5 holds every class
    assert np.asarray(final["confusion_matrix"]).sum() == 3
    assert "multi-view classification" in (out / "final_eval.txt").read_text()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(row["loss"]) for row in rows if row["kind"] == "train")
    weights = load_file(str(latest_checkpoint(out) / "model.safetensors"))
    assert weights["head.weight"].shape == (3, 192)


def test_two_ranks_and_kill9_resume_match_uninterrupted(masked_run, tmp_path):
    steps = 24
    common = [*SSV2, f"data.root={masked_run / 'corpus'}", f"train.max_steps={steps}", "train.ckpt_every=2",
              "train.keep_last=2", "classify.mixup_prob=1.0"]
    ref = launch_tiny(common + [f"train.output_dir={tmp_path / 'ref'}"])
    assert ref.returncode == 0, ref.stderr[-3000:]

    out = tmp_path / "killed"
    rng = np.random.default_rng(int(time.time()))
    proc = launch_tiny(common + [f"train.output_dir={out}"], popen=True)
    killed_at = sigkill_after_checkpoint(proc, out, int(rng.integers(1, 4)) * 2, rng)
    assert killed_at < steps, "the run finished before it could be killed; make it longer"
    resumed = launch_tiny(common + [f"train.output_dir={out}"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    a = load_file(str(latest_checkpoint(tmp_path / "ref") / "model.safetensors"))
    b = load_file(str(latest_checkpoint(out) / "model.safetensors"))
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resume from step {killed_at}"

    # Two ranks with one clip each see the same global batch of 2 (DDP averages the gradients).
    two = launch_tiny([*SSV2, f"data.root={masked_run / 'corpus'}", "train.max_steps=2", "data.batch_size=1",
                       f"train.output_dir={tmp_path / 'ddp'}"], jobtype="local_small")
    assert two.returncode == 0, two.stderr[-3000:]
    assert "ranks: 2" in two.stderr
