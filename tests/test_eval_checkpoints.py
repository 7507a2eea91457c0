"""Checkpoint format detection and loading: mmpt_lite folders, the official S3D file, MIL-NCE repo files."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_video
from safetensors.torch import save_file

from mmpt_lite.checkpoint import FORMAT as MMPT_FORMAT
from mmpt_lite.checkpoint import CheckpointFormatError, resolve_run_checkpoint, save_checkpoint
from mmpt_lite.config import MaeConfig, ModelConfig, RunConfig, TextTowerConfig, VideoTowerConfig
from mmpt_lite.evaluation import cli
from mmpt_lite.evaluation.checkpoints import (
    MILNCE_REPO,
    MMPT_MAE_FORMAT,
    RANDOM_INIT,
    S3D_OFFICIAL,
    detect_checkpoint,
    load_model,
)
from mmpt_lite.fileio import file_sha256
from mmpt_lite.models.build import build_model
from mmpt_lite.models.mae import build_mae_pretrainer

REPO = Path(__file__).resolve().parents[1]
S3D_SHAPES = REPO / "tests" / "data" / "s3d_howto100m_state_dict.json"
WORDS = ["a", "red", "blue", "green", "square", "circle", "moves", "spins"]


@pytest.fixture(scope="module")
def mmpt_run(tmp_path_factory):
    """A finished mmpt_lite run folder (vit_tiny + word2vec) whose weights differ from its initialisation."""
    out = tmp_path_factory.mktemp("run")
    rng = np.random.default_rng(0)
    lines = [f"{len(WORDS)} 8"] + [w + " " + " ".join(f"{x:.4f}" for x in rng.normal(size=8)) for w in WORDS]
    (out / "word2vec.txt").write_text("\n".join(lines) + "\n")
    cfg = RunConfig()
    cfg = dataclasses.replace(
        cfg, model=ModelConfig(video=VideoTowerConfig(preset="vit_tiny"),
                               text=TextTowerConfig(path=str(out / "word2vec.txt"), word_dim=8, hidden_dim=16),
                               embed_dim=16),
        data=dataclasses.replace(cfg.data, max_words=8),
        eval=dataclasses.replace(cfg.eval, num_windows_test=1, num_frames=4, video_size=32, batch_size=4),
        train=dataclasses.replace(cfg.train, output_dir=str(out), seed=3))
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, max_words=8)
    with torch.no_grad():  # "training": move every weight away from its initial value
        for p in model.parameters():
            p.add_(0.1)
    save_checkpoint(out, 7, model_state=model.state_dict(), train_state={"step": 7}, cfg=cfg)
    return out, model


def s3d_state_from_json() -> dict[str, torch.Tensor]:
    """Random weights under the official s3d_howto100m.pth names and shapes (BatchNorm kept sane)."""
    generator = torch.Generator().manual_seed(0)
    state = {}
    for name, shape in json.loads(S3D_SHAPES.read_text()).items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(0)
        elif name.endswith(("running_var", "bn1.weight", "bn2.weight")):
            state[name] = torch.ones(shape)
        elif name.endswith(("running_mean", "bn1.bias", "bn2.bias")):
            state[name] = torch.zeros(shape)
        else:
            state[name] = torch.randn(shape, generator=generator) * 0.05
    return state


def test_mmpt_lite_checkpoint_is_found_from_run_step_and_weights_paths(mmpt_run):
    out, _ = mmpt_run
    step = out / "checkpoints" / "step_00000007"
    for path in (out, out / "checkpoints", step, step / "model.safetensors"):
        source = detect_checkpoint(path)
        assert source.kind == MMPT_FORMAT and source.folder == step
        assert resolve_run_checkpoint(path) == step  # the reader resume and init_from use too
    assert source.sha256() == file_sha256(step / "model.safetensors")


def test_mmpt_lite_weights_load_and_random_init_is_the_runs_initialisation(mmpt_run):
    out, trained = mmpt_run
    loaded = load_model(out)
    assert loaded.kind == MMPT_FORMAT and not loaded.model.training
    for name, value in trained.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[name], value)
    baseline = load_model(out, random_init=True)
    torch.manual_seed(3)  # train.seed of the run
    initial = build_model(loaded.config.model, max_words=8)
    assert baseline.kind == RANDOM_INIT and baseline.checkpoint_id != loaded.checkpoint_id
    for name, value in initial.state_dict().items():
        torch.testing.assert_close(baseline.model.state_dict()[name], value)


def test_milnce_repo_checkpoint(tmp_path):
    cfg = ModelConfig(video=VideoTowerConfig(preset="s3d_nos2d"), text=TextTowerConfig(word_dim=8, hidden_dim=16))
    model = build_model(cfg, vocab=WORDS)
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.001}]}, "scheduler": {"last_epoch": 3}},
               tmp_path / "epoch0003.pth.tar")
    np.save(tmp_path / "dict.npy", np.array(WORDS))
    source = detect_checkpoint(tmp_path / "epoch0003.pth.tar")
    assert source.kind == MILNCE_REPO
    loaded = load_model(tmp_path / "epoch0003.pth.tar", dict_path=str(tmp_path / "dict.npy"))
    assert loaded.model.conv1.conv1.weight.shape == (64, 3, 3, 7, 7)  # no space-to-depth
    assert loaded.model.text_tower.word_tokenizer.max_words == 20
    torch.testing.assert_close(loaded.model.fc.weight, model.fc.weight)
    with pytest.raises(ValueError, match="--dict_path"):
        load_model(tmp_path / "epoch0003.pth.tar")
    np.save(tmp_path / "big_dict.npy", np.array(WORDS * 2))
    with pytest.raises(ValueError, match="do not fit"):
        load_model(tmp_path / "epoch0003.pth.tar", dict_path=str(tmp_path / "big_dict.npy"))


def test_unknown_formats_get_clear_errors(tmp_path, mmpt_run):
    (tmp_path / "notes.txt").write_text("hello")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "loose.safetensors"))
    (tmp_path / "empty_folder").mkdir()
    cases = {"notes.txt": "not a torch file", "other.pth": "without the S3D entries", "list.pth": "list",
             "loose.safetensors": "outside an mmpt_lite checkpoint folder", "empty_folder": "without model.safetensors"}
    for name, message in cases.items():
        with pytest.raises(CheckpointFormatError, match=message):
            detect_checkpoint(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        detect_checkpoint(tmp_path / "absent.pth")
    out, _ = mmpt_run
    broken = tmp_path / "broken_step"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes((out / "checkpoints" / "latest").read_bytes())
    with pytest.raises(CheckpointFormatError, match="meta.json"):
        detect_checkpoint(broken)


def test_mmpt_lite_checkpoint_through_the_cli(mmpt_run, tmp_path, capsys):
    out, _ = mmpt_run
    for i, colour in enumerate(["red", "blue", "green"]):
        make_video(tmp_path / "msrvtt" / f"video{i}.mp4", colour, seconds=1.0)
    (tmp_path / "msrvtt" / "msrvtt_test.csv").write_text(
        "key,vid_key,video_id,sentence\n" + "".join(f"r{i},m{i},video{i},a {c} square\n"
                                                   for i, c in enumerate(["red", "blue", "green"])))
    args = ["--pretrain_cnn_path", str(out), "--eval_video_root", str(tmp_path / "msrvtt"), "--quiet",
            "--compare_random_init", "--cache_dir", str(tmp_path / "cache"), "--output", str(tmp_path / "r.json")]
    assert cli.main("msrvtt", args) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert (tmp_path / "r.png").stat().st_size > 0
    assert result["protocol"]["video_size"] == 32 and result["protocol"]["defaults_from"] == "run config eval section"
    checkpoint = result["models"]["checkpoint"]
    assert checkpoint["checkpoint"]["sha256"] == file_sha256(out / "checkpoints" / "step_00000007" / "model.safetensors")
    assert set(checkpoint["metrics"]) == {"R@1", "R@5", "R@10", "MedR", "MeanR"}
    assert result["models"]["random init"]["checkpoint"]["kind"] == RANDOM_INIT
    assert "checkpoint" in capsys.readouterr().out
    assert cli.main("msrvtt", args) == 0  # second run: features from the cache
    assert json.loads((tmp_path / "r.json").read_text())["models"]["checkpoint"]["from_cache"]


def test_official_s3d_names_evaluate_end_to_end(tmp_path):
    torch.save(s3d_state_from_json(), tmp_path / "s3d.pth")
    rows = json.loads(S3D_SHAPES.read_text())["text_module.word_embd.weight"][0]
    words = WORDS + [f"filler{i}" for i in range(rows - 1 - len(WORDS))]  # 66,249 words, 66,250 rows
    np.save(tmp_path / "dict.npy", np.array(words))
    assert detect_checkpoint(tmp_path / "s3d.pth").kind == S3D_OFFICIAL
    root = tmp_path / "msrvtt"
    for i, colour in enumerate(["red", "blue"]):
        make_video(root / f"video{i}.mp4", colour, seconds=1.0)
    (root / "video2.mp4").write_bytes(b"corrupt")
    (root / "msrvtt_test.csv").write_text("key,vid_key,video_id,sentence\nr0,m0,video0,a red square\n"
                                          "r1,m1,video1,a blue circle\nr2,m2,video2,green spins\n")
    command = [sys.executable, str(REPO / "eval" / "eval_msrvtt.py"), "--pretrain_cnn_path", str(tmp_path / "s3d.pth"),
               "--dict_path", str(tmp_path / "dict.npy"), "--eval_video_root", str(root), "--num_windows_test", "1",
               "--num_frames", "8", "--video_size", "64", "--batch_size", "2", "--no_cache", "--quiet",
               "--output", str(tmp_path / "out.json")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "video2" in done.stdout and "R@1" in done.stdout
    result = json.loads((tmp_path / "out.json").read_text())["models"]["checkpoint"]
    assert result["checkpoint"]["kind"] == S3D_OFFICIAL and result["checkpoint"]["max_words"] == 16
    assert result["num_unreadable"] == 1 and result["num_texts"] == 3


def test_masked_pretraining_run_serves_the_probe_and_is_refused_for_retrieval(tmp_path, capsys):
    """A train.task=mae run: its encoder is the video tower (text tower untrained, no vocabulary)."""
    cfg = RunConfig()
    cfg = dataclasses.replace(cfg, model=ModelConfig(video=VideoTowerConfig(preset="vit_tiny"),
                                                     text=TextTowerConfig(word_dim=8, hidden_dim=16), embed_dim=16),
                              train=dataclasses.replace(cfg.train, task="mae", output_dir=str(tmp_path), seed=3))
    torch.manual_seed(1)
    mae = build_mae_pretrainer("vit_tiny", MaeConfig())
    save_checkpoint(tmp_path, 4, model_state=mae.state_dict(), train_state={"step": 4}, cfg=cfg)
    loaded = load_model(tmp_path)
    assert loaded.kind == MMPT_MAE_FORMAT and "video tower only" in loaded.description
    tower = loaded.model.video_tower.state_dict()
    for key, value in mae.state_dict().items():
        if key.startswith("encoder.") and key.removeprefix("encoder.") != "pos_embed":
            assert torch.equal(tower[key.removeprefix("encoder.")], value), key
    baseline = load_model(tmp_path, random_init=True)
    assert baseline.kind == RANDOM_INIT
    assert not torch.equal(baseline.model.video_tower.state_dict()["patch_embed.proj.weight"],
                           tower["patch_embed.proj.weight"])
    assert cli.main("msrvtt", ["--pretrain_cnn_path", str(tmp_path), "--quiet"]) == 2
    assert "masked-pretraining checkpoint" in capsys.readouterr().err
