"""Staged recipes (``stages:``, mmpt_lite/pipeline.py) at toy size: masked -> contrastive -> report, the
init_from link, skipping finished stages, exact resume after SIGKILL in the second stage, and load-time errors."""

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import launch_tiny as launch
from conftest import sigkill_after_checkpoint
from safetensors.torch import load_file

from mmpt_lite.checkpoint import latest_checkpoint, list_checkpoints
from mmpt_lite.config import ConfigError, load_config, stage_config

REPO = Path(__file__).resolve().parents[1]
CONTRASTIVE_STEPS = 16  # long enough for a kill to land inside the stage (tens of ms a step)


def staged(data_root, out, order="[masked,contrastive,report]"):
    return [f"data.root={data_root}", f"train.output_dir={out}", f"stages.order={order}",
            "stages.masked.train.max_steps=3", f"stages.contrastive.train.max_steps={CONTRASTIVE_STEPS}",
            "stages.contrastive.train.ckpt_every=2", "stages.contrastive.train.keep_last=2",
            "eval.num_frames=4", "eval.video_size=32", "eval.num_windows_test=1"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted staged run (it also generates and shards the tiny corpus)."""
    root = tmp_path_factory.mktemp("stages")
    data, out = root / "how2-synth", root / "ref"
    r = launch(staged(data, out))
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return data, out, r


def final_weights(run_dir):
    return load_file(str(latest_checkpoint(run_dir) / "model.safetensors"))


def test_staged_run_folders_init_link_and_report(reference):
    data, out, r = reference
    assert "stages masked -> contrastive -> report" in r.stdout
    # The expected time comes first and prices what this run has to do: here everything.
    expected = next(line for line in r.stdout.splitlines() if line.startswith("expected time on this machine"))
    assert r.stdout.index(expected) < r.stdout.index("stage 1/3: masked")
    for phase in ("[corpus ", ", shards ", ", masked ", ", contrastive ", ", report "):
        assert phase in expected
    assert "mmpt_lite pipeline: done in " in r.stdout and "(expected " in r.stdout
    assert f"corpus {data}: generated; shards" in r.stdout and ": built" in r.stdout
    for stage, task, steps in (("masked", "mae", 3), ("contrastive", "milnce", CONTRASTIVE_STEPS)):
        saved = load_config(out / stage / "config.yaml")
        assert saved.train.task == task and saved.stages.order == [] and saved.train.output_dir.endswith(stage)
        done = json.loads((out / stage / "stage_done.json").read_text())
        assert done["step"] == steps and Path(done["checkpoint"]) == latest_checkpoint(out / stage)
    assert load_config(out / "masked" / "config.yaml").mae.dataset == "shards"
    contrastive = load_config(out / "contrastive" / "config.yaml")
    assert Path(contrastive.model.video.init_from) == out / "masked" and contrastive.retri.enabled
    assert contrastive.data.action_negatives.count > 0
    assert f"loaded 56 tensors into video_tower from mmpt_lite checkpoint {out / 'masked'}" in r.stderr
    assert any(json.loads(line)["mined_fresh"] for line in (out / "contrastive" / "retri.jsonl").read_text().splitlines())

    report = json.loads((out / "report" / "report.json").read_text())
    assert report["trained_stage"] == "contrastive"
    tasks = {row["task"] for row in report["rows"]}
    assert tasks == {"MSR-VTT-format zero-shot", "YouCook2-format zero-shot", "HMDB-format linear probe"}
    assert all({"trained", "random_init", "chance"} <= row.keys() for row in report["rows"])
    assert (out / "report" / "report.png").read_bytes()[:4] == b"\x89PNG"
    table = (out / "report" / "report.txt").read_text()
    assert table.splitlines()[1].split() == ["task", "/", "metric", "trained", "random", "init", "chance"]
    assert table in r.stdout + "\n" and len(table.splitlines()) == 2 + len(report["rows"])


def test_rerun_skips_finished_stages(reference):
    data, out, first = reference
    before = {stage: [p.name for p in list_checkpoints(out / stage)] for stage in ("masked", "contrastive")}
    r = launch(staged(data, out))
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    for stage in ("masked", "contrastive", "report"):
        assert f"stage {stage}: skipped" in r.stdout
    expected = next(line for line in r.stdout.splitlines() if line.startswith("expected time on this machine"))
    assert "[report " in expected and "masked" not in expected and "corpus" not in expected
    assert before == {stage: [p.name for p in list_checkpoints(out / stage)] for stage in ("masked", "contrastive")}
    assert "train:" not in r.stderr  # nothing trained
    assert (out / "report" / "report.txt").read_text() in r.stdout


def test_sigkill_in_second_stage_then_rerun_matches_uninterrupted(reference, tmp_path):
    data, ref, _ = reference
    out = tmp_path / "killed"
    overrides = staged(data, out, order="[masked,contrastive]")
    rng = np.random.default_rng(int(time.time()))
    kill_after = int(rng.integers(2, 4)) * 2  # a checkpointed contrastive step; the kill lands after it
    killed_at = sigkill_after_checkpoint(launch(overrides, popen=True), out / "contrastive", kill_after, rng)
    assert killed_at < CONTRASTIVE_STEPS, "the stage finished before it could be killed; make it longer"
    assert (out / "masked" / "stage_done.json").is_file() and not (out / "contrastive" / "stage_done.json").exists()

    r = launch(overrides)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "stage masked: skipped" in r.stdout and f"contrastive (resuming from step {killed_at})" in r.stdout
    a, b = final_weights(ref / "contrastive"), final_weights(out / "contrastive")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resuming the contrastive stage from step {killed_at}"


@pytest.mark.parametrize("override,message", [
    ("stages.order=[masked,finetune]", "stages.order[1]: 'finetune' is not one of"),
    ("stages.contrastive.optim.momentm=0.9", "stages.contrastive.optim.momentm: unknown key"),
    ("stages.masked.train.max_steps=many", "stages.masked.train.max_steps: expected int"),
    ("stages.order=[report,masked]", "stages.order: ['report', 'masked']: report comes last"),
])
def test_stage_errors_fail_at_load_naming_the_key(override, message):
    r = launch([override], dryrun=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert message in r.stderr


def test_unknown_key_in_a_stage_of_a_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(f"base: {REPO / 'projects' / 'how2_pretrain.yaml'}\nstages:\n  masked: {{train.max_stepz: 3}}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: stages.masked.train.max_stepz: unknown key"):
        load_config(path)


def test_order_without_masked_drops_it_and_keeps_init_from():
    r = launch(["stages.order=[contrastive,report]", "train.output_dir=runs/x"], dryrun=True)
    assert r.returncode == 0, r.stderr
    assert "stages contrastive -> report" in r.stdout and "stage 1/3" not in r.stdout
    assert not any(line.rstrip().endswith("masked") for line in r.stdout.splitlines())  # no masked stage folder
    assert "# stage 1/2: contrastive" in r.stdout and "init_from: ''" in r.stdout
    cfg = load_config(REPO / "projects" / "how2_pretrain.yaml", ["stages.order=[contrastive,report]",
                                                                 "model.video.init_from=runs/videomae_cpu"])
    assert stage_config(cfg, "contrastive").model.video.init_from == "runs/videomae_cpu"
    cfg = load_config(REPO / "projects" / "how2_pretrain.yaml", ["train.max_steps=7"])
    masked = stage_config(cfg, "masked", ["train.max_steps=7"])  # the command line's --set win in every stage
    assert masked.train.max_steps == 7 and masked.train.task == "mae" and masked.optim.name == "adamw"
    assert stage_config(cfg, "contrastive").model.video.init_from == "runs/how2_pretrain/masked"
