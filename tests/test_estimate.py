"""The expected-time cost model (mmpt_lite/estimate.py): what it counts and how it scales."""

import json

import pytest

from mmpt_lite import estimate
from mmpt_lite.config import load_config, stage_config


def main_job(*overrides):
    return load_config("projects/how2_pretrain.yaml", list(overrides))


@pytest.mark.parametrize("steps, start, every, passes", [
    (600, 2, 1, 5),   # 94-step epochs 0..6: mined from 2 on
    (94, 2, 1, 0),    # one epoch: mining never starts
    (600, 0, 1, 7),
    (600, 2, 2, 3),   # epochs 2, 4, 6
    (1000, 1, 3, 4),  # epochs 1, 4, 7, 10 of 0..10
])
def test_embedding_epochs_follow_the_loaders_numbering(steps, start, every, passes):
    cfg = main_job(f"train.max_steps={steps}", "retri.enabled=true", f"retri.start_epoch={start}",
                   f"retri.every_epochs={every}")
    assert estimate.embedding_epochs(cfg, steps_per_epoch=94) == passes
    assert estimate.embedding_epochs(main_job("retri.enabled=false"), steps_per_epoch=94) == 0


def test_training_time_scales_with_steps_ranks_flops_and_machine_speed():
    cfg = load_config("projects/how2_pretrain.yaml")
    masked = stage_config(cfg, "masked")
    base = estimate.training_phase("masked", masked, world=2, speed=1.0).seconds
    longer = stage_config(cfg, "masked", ["train.max_steps=800"])
    assert estimate.training_phase("masked", longer, world=2, speed=1.0).seconds == pytest.approx(2 * base)
    assert estimate.training_phase("masked", masked, world=2, speed=2.0).seconds == pytest.approx(base / 2)
    bigger = stage_config(cfg, "masked", ["model.video.preset=vit_s"])
    flops_ratio = estimate.train_flops_per_video(bigger) / estimate.train_flops_per_video(masked)
    assert flops_ratio != pytest.approx(1.0, abs=0.1)
    assert estimate.training_phase("masked", bigger, world=2, speed=1.0).seconds == pytest.approx(flops_ratio * base)
    # Mining adds one corpus embedding pass per mined epoch.
    mined = estimate.training_phase("contrastive", stage_config(cfg, "contrastive"), world=2, speed=1.0)
    plain = estimate.training_phase("contrastive", stage_config(cfg, "contrastive", ["retri.enabled=false"]),
                                    world=2, speed=1.0)
    assert "7 mining passes" in mined.detail and "mining" not in plain.detail  # 800 steps: epochs 0-8, mined from 2
    rate = estimate.REFERENCE["embed_clips_per_gflops"][estimate._precision(cfg)]
    per_pass = 3000 / (rate * estimate.REFERENCE["gemm_gflops"])
    assert mined.seconds - plain.seconds == pytest.approx(7 * per_pass)


def test_inputs_are_priced_only_when_missing(tmp_path):
    cfg = load_config("projects/debug_tiny.yaml", [f"data.root={tmp_path / 'corpus'}"])
    phases = {p.name: p for p in estimate.input_phases(cfg, speed=1.0)}
    assert set(phases) == {"corpus", "shards"}
    assert phases["corpus"].detail == "39 videos"  # every set of the tiny preset (debug_tiny renders them all)
    assert phases["shards"].detail == "6 videos"
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "manifest.json").write_text(json.dumps({}))
    assert [p.name for p in estimate.input_phases(cfg, speed=1.0)] == ["shards"]


def test_describe_names_every_phase_and_the_total():
    phases = [estimate.Phase("corpus", 30, "10 videos"), estimate.Phase("masked", 90, "5 steps x 4 videos")]
    line = estimate.describe(phases, gflops=100.0)
    assert line.startswith("expected time on this machine: about 2.0 min [corpus 30 s (10 videos), masked 1.5 min")
    assert "100 GFLOP/s" in line
