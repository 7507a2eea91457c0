"""Strict config loading: unknown keys, wrong types, bad overrides, base includes."""

import subprocess
import sys

import pytest
import yaml

from mmpt_lite.config import ConfigError, RunConfig, dump_config, load_config, save_config


def write(path, text):
    path.write_text(text)
    return path


def test_defaults_roundtrip(tmp_path):
    cfg = RunConfig()
    out = tmp_path / "resolved.yaml"
    save_config(cfg, out)
    assert load_config(out) == cfg


def test_unknown_key_names_file_and_dotted_key(tmp_path):
    p = write(tmp_path / "bad.yaml", "data:\n  synthetic:\n    sise: tiny\n")
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    msg = str(exc.value)
    assert str(p) in msg and "data.synthetic.sise" in msg and "unknown key" in msg


def test_wrong_type_names_key(tmp_path):
    p = write(tmp_path / "bad.yaml", "train:\n  max_steps: ten\n")
    with pytest.raises(ConfigError, match=r"train\.max_steps: expected int"):
        load_config(p)


@pytest.mark.parametrize("text,key", [
    ("train:\n  max_steps: 1.5\n", "train.max_steps"),  # float is not an int
    ("train:\n  max_steps: true\n", "train.max_steps"),  # bool is not an int
    ("data:\n  synthetic:\n    enabled: 'yes'\n", "data.synthetic.enabled"),
    ("optim:\n  betas: 0.9\n", "optim.betas"),
    ("loss:\n  name: triplet\n", "loss.name"),
    ("data: 3\n", "data"),
])
def test_type_errors(tmp_path, text, key):
    p = write(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert key in str(exc.value)


def test_int_and_scientific_notation_accepted_for_float(tmp_path):
    p = write(tmp_path / "ok.yaml", "optim:\n  lr: 1\n  min_lr: 1e-5\n")
    cfg = load_config(p, ["optim.weight_decay=5E-2"])
    assert (cfg.optim.lr, cfg.optim.min_lr, cfg.optim.weight_decay) == (1.0, 1e-5, 0.05)
    with pytest.raises(ConfigError, match="optim.lr"):
        load_config(p, ["optim.lr=1e-4x"])


def test_overrides_apply_and_validate(tmp_path):
    p = write(tmp_path / "ok.yaml", "train:\n  max_steps: 5\n")
    cfg = load_config(p, ["train.max_steps=7", "optim.betas=[0.8, 0.9]", "data.synthetic.size=tiny"])
    assert cfg.train.max_steps == 7 and cfg.optim.betas == [0.8, 0.9] and cfg.data.synthetic.size == "tiny"
    for bad, key in [("train.max_steps=seven", "train.max_steps"), ("train.nosuch=1", "train.nosuch"),
                     ("data.batch_size", "data.batch_size"), ("train.max_steps.x=1", "train.max_steps")]:
        with pytest.raises(ConfigError) as exc:
            load_config(p, [bad])
        assert key in str(exc.value) and "--set" in str(exc.value)


def test_base_include_one_level(tmp_path):
    write(tmp_path / "base.yaml", "train:\n  max_steps: 5\n  seed: 3\n")
    child = write(tmp_path / "child.yaml", "base: base.yaml\ntrain:\n  max_steps: 9\n")
    cfg = load_config(child)
    assert (cfg.train.max_steps, cfg.train.seed) == (9, 3)
    write(tmp_path / "base2.yaml", "base: base.yaml\n")
    grandchild = write(tmp_path / "gc.yaml", "base: base2.yaml\n")
    with pytest.raises(ConfigError, match="one level"):
        load_config(grandchild)
    write(tmp_path / "badbase.yaml", "train:\n  nope: 1\n")
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path / "c2.yaml", "base: badbase.yaml\n"))
    assert "badbase.yaml" in str(exc.value) and "train.nope" in str(exc.value)


def test_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="line 3"):
        load_config(write(tmp_path / "broken.yaml", "train:\n  max_steps: 1\n    seed: 2\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_safe_load_never_executes(tmp_path):
    p = write(tmp_path / "evil.yaml", "train: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError):
        load_config(p)


def test_every_project_config_validates(repo_root):
    projects = sorted((repo_root / "projects").glob("*.yaml"))
    assert projects
    for p in projects:
        cfg = load_config(p)
        assert yaml.safe_load(dump_config(cfg))["train"]["output_dir"]


def test_launcher_exit_code_2_on_config_errors(tmp_path, repo_root):
    bad = write(tmp_path / "bad.yaml", "model:\n  video:\n    presett: vit_tiny\n")
    r = subprocess.run([sys.executable, "locallaunch.py", str(bad), "--dryrun"], cwd=repo_root,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "model.video.presett" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = subprocess.run([sys.executable, "locallaunch.py", "projects/how2_pretrain.yaml", "--dryrun",
                        "--set", "data.batch_size=big"], cwd=repo_root, capture_output=True, text=True)
    assert r.returncode == 2 and "data.batch_size" in r.stderr


def test_clips_per_video_must_divide_the_batch(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data: {batch_size: 6, clips_per_video: 4}\n")
    with pytest.raises(ConfigError, match="data.clips_per_video: 4 must .* divide data.batch_size"):
        load_config(path)
    # Mined batches keep a video's clips together (retrieval/mining.py mines videos, then expands them).
    path.write_text("data: {batch_size: 8, clips_per_video: 2}\nretri: {enabled: true}\n")
    assert load_config(path).data.clips_per_video == 2


def test_action_negatives_checks(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data: {action_negatives: {count: 4}}\n")
    assert load_config(path).data.action_negatives.count == 4
    assert load_config(path).data.action_negatives.lexicon == "actions.tsv"
    with pytest.raises(ConfigError, match="data.action_negatives.count: -1 must be >= 0"):
        load_config(path, ["data.action_negatives.count=-1"])
    with pytest.raises(ConfigError, match="need loss.name milnce, not 'infonce'"):
        load_config(path, ["loss.name=infonce"])
    with pytest.raises(ConfigError, match="data.action_negatives.lexcon"):
        load_config(path, ["data.action_negatives.lexcon=x"])


def test_synthetic_train_videos_must_not_be_negative(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data: {synthetic: {train_videos: 3000}}\n")
    assert load_config(path).data.synthetic.train_videos == 3000
    with pytest.raises(ConfigError, match=r"data.synthetic.train_videos: -5 must be >= 0 \(0: the size preset's\)"):
        load_config(path, ["data.synthetic.train_videos=-5"])


def test_a_conflict_between_sections_waits_for_the_remaining_overrides(repo_root):
    main_job = repo_root / "projects" / "how2_pretrain.yaml"  # has action-swapped negatives (MIL-NCE only)
    for order in (["loss.name=infonce", "data.action_negatives.count=0"],
                  ["data.action_negatives.count=0", "loss.name=infonce"]):
        assert load_config(main_job, order).loss.name == "infonce"
    with pytest.raises(ConfigError, match=r"^--set loss.name=infonce: data.action_negatives.count: .* need loss.name"):
        load_config(main_job, ["loss.name=infonce", "train.max_steps=3"])
    with pytest.raises(ConfigError, match=r"^--set train.max_step=3: train.max_step: unknown key"):
        load_config(main_job, ["loss.name=infonce", "train.max_step=3"])  # key errors still fail at once


def test_masked_pretraining_on_a_synthetic_set_needs_that_set_rendered(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data: {synthetic: {sets: [train, ssv2]}}\ntrain: {task: mae}\nmae: {dataset: ssv2}\n")
    assert load_config(path).mae.dataset == "ssv2"
    with pytest.raises(ConfigError, match=r"data.synthetic.sets: masked pretraining on mae.dataset=ssv2"):
        load_config(path, ["data.synthetic.sets=[train, msrvtt]"])
    assert load_config(path, ["data.synthetic.sets=[train]", "mae.dataset=shards"]).mae.dataset == "shards"
