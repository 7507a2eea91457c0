"""Integrity: bad configs fail at load in one line; corrupted shards and checkpoints are detected on read;
a full disk while checkpointing leaves the previous checkpoint intact.

Every case uses real files made in tmp folders (real bytes flipped, real truncations, a real tmpfs filled up).
"""

import os
import subprocess
import sys
from pathlib import Path

from mmpt_lite.launch import main as launch_main

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- configs
# (case id, file bytes or None for "no such file" / a folder, extra --set, what the one line must name)
CONFIG_FILE_CASES = [
    ("unknown_top_key", b"trainn: {max_steps: 3}\n", ["trainn", "unknown key"]),
    ("unknown_nested_key", b"data:\n  synthetic:\n    sise: tiny\n", ["data.synthetic.sise", "unknown key"]),
    ("wrong_type_int", b"train: {max_steps: ten}\n", ["train.max_steps", "expected int"]),
    ("wrong_type_bool", b"data: {random_flip: 'yes'}\n", ["data.random_flip", "expected bool"]),
    ("wrong_type_section", b"model: 3\n", ["model", "expected a mapping"]),
    ("wrong_type_list", b"optim: {betas: 0.9}\n", ["optim.betas", "expected a list"]),
    ("negative_batch_size", b"data: {batch_size: -4}\n", ["data.batch_size", "-4"]),
    ("zero_num_frames", b"data: {num_frames: 0}\n", ["data.num_frames"]),
    ("zero_fps", b"data: {fps: 0}\n", ["data.fps", "> 0"]),
    ("negative_lr", b"optim: {lr: -0.001}\n", ["optim.lr", "> 0"]),
    ("negative_workers", b"data: {num_workers: -1}\n", ["data.num_workers", ">= 0"]),
    ("zero_accum_steps", b"optim: {accum_steps: 0}\n", ["optim.accum_steps"]),
    ("nan_temperature", b"loss: {temperature: .nan}\n", ["loss.temperature", "finite"]),
    ("zero_eval_batch", b"eval: {batch_size: 0}\n", ["eval.batch_size"]),
    ("mask_ratio_one", b"mae: {mask_ratio: 1.0}\n", ["mae.mask_ratio", "(0, 1)"]),
    ("negative_seed", b"train: {seed: -1}\n", ["train.seed"]),
    ("no_steps_no_epochs", b"train: {max_steps: 0}\n", ["train.max_steps", "trains nothing"]),
    ("bad_port", b"launch: {master_port: 0}\n", ["launch.master_port"]),
    ("unknown_preset", b"model: {video: {preset: vit_xxl}}\n", ["model.video.preset", "vit_xxl", "vit_tiny"]),
    ("unknown_loss", b"loss: {name: triplet}\n", ["loss.name", "triplet"]),
    ("unknown_task", b"train: {task: clip}\n", ["train.task", "'clip'", "'milnce'"]),
    ("unknown_optim", b"optim: {name: lamb}\n", ["optim.name", "lamb"]),
    ("unknown_stage_key", b"stages: {masked: {train.max_stepz: 3}}\n", ["stages.masked.train.max_stepz"]),
    ("binary_bytes", b"\x1f\x8b\x08\x00\x00\x00\xff\xfe binary", ["not UTF-8", "0x8b"]),
    ("yaml_syntax", b"train:\n  max_steps: 3\n   seed: 1\n", ["line 3", "invalid YAML"]),
    ("nul_byte", b"train:\n  seed: 1\x00\n", ["line 2", "invalid YAML"]),
    ("duplicate_key", b"train:\n  max_steps: 3\n  max_steps: 4\n", ["line 3", "duplicate key 'max_steps'"]),
    ("top_level_list", b"- train\n- data\n", ["top level must be a mapping", "list"]),
    ("top_level_scalar", b"42\n", ["top level must be a mapping", "int"]),
    ("empty_file", b"", ["empty config file"]),
    ("comments_only", b"# nothing here\n", ["empty config file"]),
    ("missing_file", None, ["config file not found"]),
    ("directory", "dir", ["is a directory"]),
    ("missing_base", b"base: nothere.yaml\n", ["base:", "nothere.yaml", "not found"]),
    ("self_base", b"base: self_base.yaml\n", ["base:", "cannot include itself"]),
    ("cyclic_base", b"base: cycle_b.yaml\n", ["cycle_b.yaml", "base:", "cycle"]),
]
CONFIG_SET_CASES = [  # on a valid file
    ("set_without_equals", ["--set", "train.max_steps"], ["--set train.max_steps", "KEY=VALUE"]),
    ("set_unknown_key", ["--set", "train.nosuch=1"], ["--set train.nosuch=1", "train.nosuch", "unknown key"]),
    ("set_bad_value", ["--set", "data.batch_size=big"], ["--set data.batch_size=big", "data.batch_size"]),
    ("set_out_of_range", ["--set", "retri.nprobe=0"], ["retri.nprobe"]),
    ("set_infinite", ["--set", "data.fps=.inf"], ["data.fps", "finite"]),
    ("set_classifier_preset", ["--set", "model.video.preset=x3d_s"], ["model.video.preset", "classify"]),
    ("slurm_flag_zero_nodes", ["--nodes", "0"], ["launch.nodes"]),
]
# Without --dryrun the bad file must still fail before anything runs; these keep a case that wrongly passed
# away from the repository's runs/ and data/ (it would fail fast on missing data, with status 1, not 2).
SAFE = ["--set", "data.synthetic.enabled=false"]


def _write_case(folder: Path, name: str, content) -> Path:
    path = folder / f"{name}.yaml"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    if name == "cyclic_base":
        (folder / "cycle_b.yaml").write_text("base: cyclic_base.yaml\n")
    return path


def _in_process(argv, capsys) -> tuple[int | str, str, str]:
    """launch.main's status (or "crash: <exception>" when one escaped it) and what it printed."""
    try:
        rc = launch_main(argv)
    except Exception as exc:  # noqa: BLE001 - counted and reported as a crash, the test then fails
        rc = f"crash: {type(exc).__name__}"
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_config_errors_exit_2_with_one_line_in_every_job_type(tmp_path, capsys):
    """Every bad config ends launch.main with status 2 and exactly one stderr line naming the file (or the
    --set) and the dotted key, with and without --dryrun, for local_single, local_small and slurm."""
    valid = tmp_path / "valid.yaml"
    valid.write_text(f"train: {{output_dir: {tmp_path / 'out'}, max_steps: 2}}\n"
                     f"data: {{root: {tmp_path / 'no_corpus'}}}\n")
    cases = [(name, _write_case(tmp_path, name, content), [], must) for name, content, must in CONFIG_FILE_CASES]
    cases += [(name, valid, extra, must) for name, extra, must in CONFIG_SET_CASES]
    modes = [list(SAFE), ["--dryrun"], ["--dryrun", "--jobtype", "local_small"], ["--dryrun", "--jobtype", "slurm"]]
    rows, failures = [], []
    for name, path, extra, must in cases:
        for mode in modes:
            rc, out, err = _in_process([str(path), *mode, *extra], capsys)
            lines = err.strip().splitlines()
            named = path.name if not extra else ""  # --set cases name the --set instead
            ok = (rc == 2 and len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0]
                  and all(m in lines[0] for m in must) and out == "")
            rows.append((name, rc, "Traceback" in err or str(rc).startswith("crash")))
            if not ok:
                failures.append(f"{name} {mode}: rc={rc} stderr={err!r} stdout={out[:200]!r}")
    assert not (tmp_path / "out").exists()  # nothing ran
    print(f"\nconfig cases: {len(cases)} ({len(cases) * len(modes)} launcher calls) | exit 2: "
          f"{sum(rc == 2 for _, rc, _ in rows)} | tracebacks or crashes: {sum(tb for _, _, tb in rows)} | wrong: "
          f"{len(failures)}")
    assert len(cases) >= 25 and not failures, "\n".join(failures)


def _run(cmd, cwd=REPO):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_config_errors_reach_the_terminal_as_one_line_without_traceback(tmp_path):
    """The real entry points in subprocesses: the launcher (three job types) and two eval scripts' --config."""
    binary = _write_case(tmp_path, "binary", b"\x89PNG\r\n\x1a\n\x00\x00")
    syntax = _write_case(tmp_path, "syntax", b"data:\n  fps: [5\n")
    cyclic = _write_case(tmp_path, "cyclic_base", b"base: cycle_b.yaml\n")
    preset = _write_case(tmp_path, "preset", b"model: {video: {preset: resnet50}}\n")
    launcher = [sys.executable, "locallaunch.py"]
    runs = [
        (launcher + [str(binary), "--dryrun", "--jobtype", "local_small"], [str(binary), "not UTF-8"]),
        (launcher + [str(syntax), *SAFE], [str(syntax), "line 3"]),
        (launcher + ["projects/debug_tiny.yaml", "--dryrun", "--jobtype", "slurm", "--nodes", "0"], ["launch.nodes"]),
        ([sys.executable, "eval/eval_msrvtt.py", "--config", str(cyclic), "--pretrain_cnn_path", str(tmp_path)],
         ["eval_msrvtt.py: error:", "cycle"]),
        ([sys.executable, "eval/eval_hmdb.py", "--config", str(preset), "--random_init"],
         ["eval_hmdb.py: error:", str(preset), "model.video.preset", "resnet50"]),
    ]
    for cmd, must in runs:
        r = _run(cmd)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1, (cmd, r.returncode, r.stderr)
        assert "Traceback" not in r.stdout + r.stderr and all(m in lines[0] for m in must), (cmd, r.stderr)


def test_config_names_match_the_modules_that_own_them():
    """The preset and task names the config checks at load are the ones the model and task tables hold."""
    from mmpt_lite.config.sections import CLASSIFIER_PRESET_NAMES, TASK_NAMES, VIDEO_PRESET_NAMES
    from mmpt_lite.models.build import VIDEO_PRESETS
    from mmpt_lite.models.classifier import CLASSIFIER_PRESETS
    from mmpt_lite.train.tasks import TASKS

    assert set(VIDEO_PRESET_NAMES) == set(VIDEO_PRESETS)
    assert set(CLASSIFIER_PRESET_NAMES) == set(CLASSIFIER_PRESETS)
    assert set(TASK_NAMES) == set(TASKS)
