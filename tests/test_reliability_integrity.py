"""Integrity: bad configs fail at load in one line; corrupted shards and checkpoints are detected on read;
a full disk while checkpointing leaves the previous checkpoint intact.

Every case uses real files made in tmp folders (real bytes flipped, real truncations, a real tmpfs filled up).
"""

import errno
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import launch_tiny, make_video

from mmpt_lite.checkpoint import (
    CheckpointCorruptError,
    CheckpointFormatError,
    CheckpointWriteError,
    latest_checkpoint,
    load_checkpoint,
    load_rank_state,
    rank_state_staging,
    resolve_run_checkpoint,
    save_checkpoint,
    write_rank_state,
)
from mmpt_lite.config import RunConfig
from mmpt_lite.data.loader import MilNceClipDataset, TrainLoader
from mmpt_lite.data.shard_build import build_video_shards
from mmpt_lite.data.shards import ShardCorruptError, ShardedCaptionStore, ShardedVideoStore, verify_shards
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
    ("bad_port", b"launch: {master_port: 70000}\n", ["launch.master_port"]),
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


# --------------------------------------------------------------------------- shards
SHARD_FPS = 5.0


@pytest.fixture(scope="module")
def shard_sets(tmp_path_factory) -> dict[str, Path]:
    """Three 2-3 s videos with captions, sharded as jpeg, raw and h264 (2 videos per shard)."""
    root = tmp_path_factory.mktemp("shard_corpus")
    for i, colour in enumerate(["red", "green", "blue"]):
        make_video(root / "videos" / f"v{i}.mp4", colour, seconds=2.0 + i * 0.5, fps=10, size="64x48")
        (root / "captions").mkdir(exist_ok=True)
        (root / "captions" / f"v{i}.csv").write_text("start,end,text\n0.0,1.0,first words\n1.0,2.0,second words\n")
    (root / "list.csv").write_text("video_path\nv0.mp4\nv1.mp4\nv2.mp4\n")
    out = {}
    for kind in ("jpeg", "raw", "h264"):
        out[kind] = root / kind
        build_video_shards(root / "list.csv", root / "videos", out[kind], caption_root=root / "captions", storage=kind,
                           fps=SHARD_FPS, short_side=32, videos_per_shard=2, progress=False)
    return out


def _read_everything(root: Path) -> None:
    videos, captions = ShardedVideoStore(root), ShardedCaptionStore(root)
    for vid in videos.video_ids:
        videos.read_frames(vid, 0, videos.num_frames(vid))
        captions.get(vid)


def _flip(path: Path, offset: int) -> int:
    """Invert one byte of ``path`` (a negative offset counts from the end); returns the byte's offset."""
    data = bytearray(path.read_bytes())
    offset %= len(data)
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    return offset


def _zero(path: Path, offset: int, count: int) -> int:
    data = bytearray(path.read_bytes())
    data[offset:offset + count] = bytes(count)
    path.write_bytes(bytes(data))
    return offset


def _truncate(path: Path, cut: int) -> None:
    path.write_bytes(path.read_bytes()[:-cut])


def _append(path: Path) -> None:
    with open(path, "ab") as f:
        f.write(b"\0")


def _mid(path: Path) -> int:
    return path.stat().st_size // 2


def _item_of_byte(shard: Path, offset: int, kind: str) -> str:
    """How the error names the item whose stored bytes hold data.bin byte ``offset``."""
    offsets, starts = np.load(shard / "byte_offsets.npy"), np.load(shard / "video_starts.npy")
    item = int(np.searchsorted(offsets, offset, side="right")) - 1  # h264: a video, else a frame
    video = item if kind == "h264" else int(np.searchsorted(starts, item, side="right")) - 1
    vid = np.load(shard / "video_ids.npy")[video].decode()
    return f"video {vid!r}" if kind == "h264" else f"frame {item - int(starts[video])} of video {vid!r}"


# (case, storage, damage(shard_00000 folder) -> offset of the damaged data.bin byte or None, detected at)
SHARD_CASES = [
    ("jpeg_flip_mid_data", "jpeg", lambda s: _flip(s / "data.bin", _mid(s / "data.bin")), "read"),
    ("jpeg_flip_first_byte", "jpeg", lambda s: _flip(s / "data.bin", 0), "read"),
    ("jpeg_zeroed_block", "jpeg", lambda s: _zero(s / "data.bin", 100, 600), "read"),
    ("raw_flip_one_pixel", "raw", lambda s: _flip(s / "data.bin", _mid(s / "data.bin")), "read"),
    ("raw_flip_last_byte", "raw", lambda s: _flip(s / "data.bin", -1), "read"),
    ("h264_flip_mid_data", "h264", lambda s: _flip(s / "data.bin", _mid(s / "data.bin")), "read"),
    ("jpeg_truncate_data", "jpeg", lambda s: _truncate(s / "data.bin", 1), "open"),
    ("raw_truncate_data_half", "raw", lambda s: _truncate(s / "data.bin", _mid(s / "data.bin")), "open"),
    ("jpeg_append_to_data", "jpeg", lambda s: _append(s / "data.bin"), "open"),
    ("flip_byte_offsets", "jpeg", lambda s: _flip(s / "byte_offsets.npy", -3), "open"),
    ("flip_video_starts", "raw", lambda s: _flip(s / "video_starts.npy", -1), "open"),
    ("flip_video_ids", "jpeg", lambda s: _flip(s / "video_ids.npy", -1), "open"),
    ("flip_caption_text", "jpeg", lambda s: _flip(s / "caption_text.bin", 3), "open"),
    ("truncate_caption_times", "h264", lambda s: _truncate(s / "caption_times.npy", 4), "open"),
    ("flip_item_crc32", "raw", lambda s: _flip(s / "item_crc32.npy", -1), "open"),
    ("delete_videos_npy", "jpeg", lambda s: (s / "videos.npy").unlink(), "open"),
]


def test_damaged_shards_are_detected_on_read_in_one_line(shard_sets, tmp_path):
    """A flipped byte, a zeroed block, a truncation or a missing file in any shard file ends the read with one
    ShardCorruptError line naming the file (and for data.bin the video and frame); nothing decodes garbage."""
    for root in shard_sets.values():
        _read_everything(root)  # intact: reads everything without complaint
    rows, failures = [], []
    for name, kind, damage, when in SHARD_CASES:
        root = tmp_path / name
        shutil.copytree(shard_sets[kind], root)
        shard = root / "shard_00000"
        data_offset = damage(shard)
        stage = "open"
        try:
            ShardedVideoStore(root)
            ShardedCaptionStore(root)
            stage = "read"
            _read_everything(root)
            rows.append((name, "missed"))
            failures.append(f"{name}: not detected")
            continue
        except ShardCorruptError as exc:
            message = str(exc)
        except Exception as exc:  # noqa: BLE001 - anything else is a crash for this table
            rows.append((name, "crash"))
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        rows.append((name, f"detected at {stage}"))
        expected = [str(shard)] + (["crc32"] if when == "read" else [])
        if when == "read":
            expected.append(_item_of_byte(shard, data_offset, kind))
        if stage != when or "\n" in message or not all(e in message for e in expected):
            failures.append(f"{name}: at {stage} (expected {when}): {message!r} lacks {expected}")
    detected = sum(r.startswith("detected") for _, r in rows)
    print(f"\nshard damage cases: {len(rows)} | detected: {detected} (at open {sum(r.endswith('open') for _, r in rows)}, "
          f"on read {sum(r.endswith('read') for _, r in rows)}) | crashes: {sum(r == 'crash' for _, r in rows)} | "
          f"missed: {sum(r == 'missed' for _, r in rows)}")
    assert not failures, "\n".join(failures)


def test_old_manifest_without_checksums_stays_readable_and_says_so(shard_sets, tmp_path, caplog):
    root = tmp_path / "old"
    shutil.copytree(shard_sets["raw"], root)
    manifest = json.loads((root / "manifest.json").read_text())
    for entry in manifest["shards"]:  # as a builder before per-item checksums wrote it
        (root / entry["files"].pop("item_crc32")["path"]).unlink()
    (root / "manifest.json").write_text(json.dumps(manifest))
    fresh = ShardedVideoStore(shard_sets["raw"])
    with caplog.at_level(logging.WARNING, logger="mmpt_lite"):
        store = ShardedVideoStore(root)
    assert "2 of 2 shards were built without per-frame checksums" in caplog.text and "size only" in caplog.text
    for vid in store.video_ids:
        assert np.array_equal(store.read_frames(vid, 0, 99), fresh.read_frames(vid, 0, 99))
    _truncate(root / "shard_00001" / "data.bin", 10)  # sizes are still checked
    with pytest.raises(ShardCorruptError, match=r"shard_00001/data.bin: \d+ bytes but the manifest says"):
        ShardedVideoStore(root)
    assert verify_shards(shard_sets["raw"]) == []


def _tokenize(texts):
    return {"input_ids": torch.tensor([[len(t), 1] for t in texts])}


def test_corrupt_frame_in_a_dataloader_worker_reaches_the_trainer_as_one_line(shard_sets, tmp_path):
    """The training loader (TrainLoader, one worker process) on a shard whose every frame has a flipped byte:
    the main process gets ShardCorruptError with the worker's one-line message, not garbage batches."""
    root = tmp_path / "raw"
    shutil.copytree(shard_sets["raw"], root)
    for shard in sorted(root.glob("shard_*")):
        offsets = np.load(shard / "byte_offsets.npy")
        data = bytearray((shard / "data.bin").read_bytes())
        for end in offsets[1:]:
            data[int(end) - 1] ^= 0x01
        (shard / "data.bin").write_bytes(bytes(data))
    dataset = MilNceClipDataset(ShardedVideoStore(root), ShardedCaptionStore(root), _tokenize, num_frames=4,
                                fps=SHARD_FPS, video_size=32, num_candidates=1, min_time=1.0, random_flip=False)
    loader = TrainLoader(dataset, batch_size=2, rank=0, world_size=1, seed=0, num_workers=1)
    with pytest.raises(ShardCorruptError) as exc:
        next(iter(loader))
    message = str(exc.value)
    assert "\n" not in message and "Traceback" not in message, message
    assert re.fullmatch(rf"{re.escape(str(root))}/shard_0000[01]/data\.bin: frame \d+ of video 'v\d' fails its crc32 "
                        r"check \(stored [0-9a-f]{8}, read [0-9a-f]{8}\); rerun scripts/shard_howto.py .*", message), message


# --------------------------------------------------------------------------- checkpoints
def _train_state(model: torch.nn.Module, step: int) -> dict:
    """A real optimizer state after one Adam step, as the trainer saves it (plus its step)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(4, model.in_features)).square().mean().backward()
    optimizer.step()
    return {"step": step, "optimizer": optimizer.state_dict(), "rng_by_rank": [{"torch": torch.get_rng_state()}]}


def _save(out: Path, step: int, *, width: int = 256, ranks: int = 0) -> Path:
    """Checkpoint ``step`` of a real Linear(width, width) with its Adam state (and ``ranks`` rank_state files,
    written through the per-rank staging path DeepSpeed uses)."""
    torch.manual_seed(step)
    model = torch.nn.Linear(width, width)
    staging = None
    if ranks:
        staging = rank_state_staging(out, step)
        staging.mkdir(parents=True)
        for rank in range(ranks):
            write_rank_state(staging, rank, {"partition": torch.arange(width, dtype=torch.float32) + rank})
    return save_checkpoint(out, step, model_state=model.state_dict(), train_state=_train_state(model, step),
                           cfg=RunConfig(), keep_last=5, rank_states=staging)


def _meta_list(folder: Path) -> None:
    (folder / "meta.json").write_text("[1, 2]\n")


def _meta_digit(folder: Path) -> None:
    meta = json.loads((folder / "meta.json").read_text())
    sha = meta["files"]["model.safetensors"]["sha256"]
    meta["files"]["model.safetensors"]["sha256"] = ("0" if sha[0] != "0" else "1") + sha[1:]
    (folder / "meta.json").write_text(json.dumps(meta))


# (case, damage(step folder), substrings of load_checkpoint's error, does resolve_run_checkpoint see it)
CHECKPOINT_CASES = [
    ("flip_model_byte", lambda f: _flip(f / "model.safetensors", _mid(f / "model.safetensors")),
     ["model.safetensors", "sha256 differs"], True),
    ("flip_model_header", lambda f: _flip(f / "model.safetensors", 20), ["model.safetensors", "sha256"], True),
    ("truncate_model", lambda f: _truncate(f / "model.safetensors", 100), ["model.safetensors", "truncated"], True),
    ("flip_train_state", lambda f: _flip(f / "train_state.pt", _mid(f / "train_state.pt")),
     ["train_state.pt", "sha256 differs"], False),
    ("truncate_train_state", lambda f: _truncate(f / "train_state.pt", 1), ["train_state.pt", "truncated"], False),
    ("zero_train_state_block", lambda f: _zero(f / "train_state.pt", 4096, 4096), ["train_state.pt"], False),
    ("delete_train_state", lambda f: (f / "train_state.pt").unlink(), ["train_state.pt", "missing"], False),
    ("flip_config", lambda f: _flip(f / "config.yaml", 2), ["config.yaml", "sha256"], True),
    ("truncate_meta_json", lambda f: _truncate(f / "meta.json", 10), ["meta.json", "not valid JSON"], True),
    ("meta_json_a_list", _meta_list, ["meta.json", "expected 'mmpt_lite'"], True),
    ("meta_json_wrong_sha", _meta_digit, ["model.safetensors", "sha256 differs"], True),
]


def test_damaged_checkpoints_are_detected_on_load_in_one_line(tmp_path):
    """Resume (load_checkpoint) and evaluation / init_from (resolve_run_checkpoint) refuse a checkpoint whose files
    differ from what meta.json recorded, in one CheckpointFormatError line naming the file."""
    rows, failures = [], []
    for name, damage, must, seen_by_eval in CHECKPOINT_CASES:
        out = tmp_path / name
        folder = _save(out, 3)
        load_checkpoint(folder)  # intact
        damage(folder)
        outcomes = []
        for reader in (load_checkpoint, resolve_run_checkpoint):
            try:
                reader(folder if reader is load_checkpoint else out)
                outcomes.append(None)
            except CheckpointFormatError as exc:
                outcomes.append(str(exc))
            except Exception as exc:  # noqa: BLE001 - a crash for this table
                outcomes.append(f"crash {type(exc).__name__}: {exc}")
        resume, evaluation = outcomes
        rows.append((name, "crash" if any(o and o.startswith("crash") for o in outcomes) else
                     "detected" if resume else "missed"))
        if not resume or "\n" in resume or resume.startswith("crash") or not all(m in resume for m in must + [str(folder)]):
            failures.append(f"{name}: load_checkpoint -> {resume!r}")
        if seen_by_eval != (evaluation is not None) or (evaluation and evaluation.startswith("crash")):
            failures.append(f"{name}: resolve_run_checkpoint -> {evaluation!r}")
    print(f"\ncheckpoint damage cases: {len(rows)} | detected: {sum(r == 'detected' for _, r in rows)} | crashes: "
          f"{sum(r == 'crash' for _, r in rows)} | missed: {sum(r == 'missed' for _, r in rows)}")
    assert not failures, "\n".join(failures)


def test_rank_state_files_are_verified_per_rank(tmp_path):
    folder = _save(tmp_path, 2, ranks=2)
    meta = json.loads((folder / "meta.json").read_text())
    assert sorted(meta["files"]) == ["config.yaml", "model.safetensors", "rank_state/rank_00000.pt",
                                     "rank_state/rank_00001.pt", "train_state.pt"]
    assert torch.equal(load_rank_state(folder, 1)["partition"] - 1, load_rank_state(folder, 0)["partition"])
    _flip(folder / "rank_state" / "rank_00001.pt", -30)
    load_rank_state(folder, 0)  # rank 0's own file is intact
    with pytest.raises(CheckpointCorruptError, match=r"rank_state/rank_00001.pt: sha256 differs from meta.json"):
        load_rank_state(folder, 1)


def test_eval_cli_refuses_a_corrupt_checkpoint_in_one_line(tmp_path, capsys):
    from mmpt_lite.evaluation.cli import main as eval_main

    folder = _save(tmp_path, 4)
    _flip(folder / "model.safetensors", -5)
    assert eval_main("msrvtt", ["--pretrain_cnn_path", str(tmp_path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0] == (f"eval_msrvtt.py: error: {folder / 'model.safetensors'}: sha256 differs "
                                            "from meta.json (corrupted)"), lines


def test_checkpoint_from_before_file_records_is_still_read_and_its_weights_checked(tmp_path):
    folder = _save(tmp_path, 5)
    meta = json.loads((folder / "meta.json").read_text())
    del meta["files"]  # as version 1 wrote it before sizes and hashes of every file were recorded
    (folder / "meta.json").write_text(json.dumps(meta))
    assert load_checkpoint(folder)["train_state"]["step"] == 5
    _flip(folder / "model.safetensors", -5)
    with pytest.raises(CheckpointCorruptError, match="model.safetensors: sha256 differs"):
        load_checkpoint(folder)


def test_resume_refuses_a_corrupt_latest_and_names_the_newest_intact_one(tmp_path):
    """The policy: refuse (no silent fall-back), naming the damaged file and the previous intact step folder."""
    steps = [_save(tmp_path, step) for step in (10, 20, 30)]
    assert latest_checkpoint(tmp_path) == steps[2]
    _flip(steps[2] / "train_state.pt", _mid(steps[2] / "train_state.pt"))
    _truncate(steps[1] / "model.safetensors", 8)  # the one before is damaged too: the hint skips it
    with pytest.raises(CheckpointCorruptError) as exc:
        load_checkpoint(latest_checkpoint(tmp_path))
    assert str(exc.value) == (f"{steps[2] / 'train_state.pt'}: sha256 differs from meta.json (corrupted); the newest "
                              f"intact checkpoint before it is {steps[0]}: resume from it with train.resume={steps[0]}, "
                              f"or move step_00000030 aside")
    assert latest_checkpoint(tmp_path) == steps[2]  # nothing was changed on disk by the refusal
    assert load_checkpoint(steps[0])["train_state"]["step"] == 10
    _flip(steps[0] / "config.yaml", 0)
    with pytest.raises(CheckpointCorruptError, match="no older intact checkpoint in the same folder$"):
        load_checkpoint(steps[2])


# --------------------------------------------------------------------------- full disk
def _tmpfs(tmp_path: Path, size: str):
    """A real tmpfs of ``size`` mounted in tmp_path: writes past its size fail with ENOSPC (skipped, saying why,
    only where mounting is not permitted)."""
    mount = tmp_path / f"disk_{size}"
    mount.mkdir()
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True,
                           text=True)
    except FileNotFoundError:
        pytest.skip("no mount command on this machine: the full-disk tests mount a small tmpfs")
    if r.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here ({r.stderr.strip()}): the full-disk tests need root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.fixture
def small_disk(tmp_path):
    yield from _tmpfs(tmp_path, "8m")


@pytest.fixture
def large_disk(tmp_path):
    """Room for one debug_tiny checkpoint (22 MB) and its run folder."""
    yield from _tmpfs(tmp_path, "64m")


def _fill(disk: Path, leave: int) -> Path:
    """Fill the file system of ``disk`` with one file, then give back ``leave`` bytes (tmpfs frees whole pages)."""
    filler = disk / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(bytes(1 << 16))
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


def _free(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def test_full_disk_while_checkpointing_keeps_the_previous_checkpoint(small_disk):
    """Disk full at every point of a checkpoint write (weights, train state, config, meta.json, the new latest):
    one CheckpointWriteError line naming the file and ENOSPC; step 1 stays latest and verifies; no temporary
    file or folder remains and no space leaks; with space again the next write succeeds."""
    out = small_disk / "run"
    first = _save(out, 1)
    sizes = {p.name: p.stat().st_size for p in first.iterdir()}
    page = 4096
    pages = {name: -(-size // page) * page for name, size in sizes.items()}
    # Free space from nothing to "all but the last small file": each fails at a later file of the write.
    leaves = [0, pages["model.safetensors"] // 2, pages["model.safetensors"] + pages["train_state.pt"] // 2,
              pages["model.safetensors"] + pages["train_state.pt"],
              pages["model.safetensors"] + pages["train_state.pt"] + pages["config.yaml"],
              pages["model.safetensors"] + pages["train_state.pt"] + pages["config.yaml"] + pages["meta.json"]]
    failed_at = []
    for leave in leaves:
        filler = _fill(small_disk, leave)
        before = _free(small_disk)
        with pytest.raises(CheckpointWriteError) as exc:
            _save(out, 2)
        message = str(exc.value)
        failed_at.append(message.split(": ", 2)[1].rsplit("/", 1)[-1])
        assert exc.value.errno == errno.ENOSPC and "\n" not in message, message
        assert message.startswith(f"checkpoint step 2 not written: {out / 'checkpoints'}/") and (
            f": ENOSPC No space left on device; the previous checkpoint {first} is intact and still latest") in message
        assert latest_checkpoint(out) == first and load_checkpoint(first)["train_state"]["step"] == 1
        assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step_00000001"]
        assert _free(small_disk) == before  # every temporary byte given back
        filler.unlink()
    assert len(set(failed_at)) >= 4, failed_at  # the failures hit different files of the write
    print(f"\nfull-disk cases: {len(leaves)} (failed while writing {', '.join(failed_at)}) | previous checkpoint "
          f"intact: {len(leaves)} | leftovers: 0")
    second = _save(out, 2)
    assert latest_checkpoint(out) == second and load_checkpoint(second)["train_state"]["step"] == 2


def test_training_run_on_a_full_disk_and_on_a_corrupt_latest_stops_naming_the_file(large_disk, tmp_path):
    """Real runs: (1) 2 steps, checkpoint at 2; (2) the disk filled, resumed to step 4: the checkpoint at 4 fails,
    the run exits non-zero naming ENOSPC and the file, step 2 stays latest and intact; (3) step 2's train state
    damaged: the resume is refused naming the file (no silent restart from scratch)."""
    out = large_disk / "run"
    common = [f"data.root={tmp_path / 'how2-synth'}", f"train.output_dir={out}", "train.ckpt_every=2"]
    r = launch_tiny(common + ["train.max_steps=2"])
    assert r.returncode == 0, r.stderr[-3000:]
    step2 = latest_checkpoint(out)
    filler = _fill(large_disk, 512 * 1024)  # room for the run's logs and config, not for 7 MB of weights
    r = launch_tiny(common + ["train.max_steps=4"])
    expected = (f"checkpoint step 4 not written: {out / 'checkpoints'}/.tmp_step_00000004_", ": ENOSPC No space left "
                f"on device; the previous checkpoint {step2} is intact and still latest")
    assert r.returncode == 1 and any(expected[0] in line and line.endswith(expected[1])
                                     for line in r.stderr.splitlines()), r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert latest_checkpoint(out) == step2 and load_checkpoint(step2)["train_state"]["step"] == 2
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", step2.name]
    filler.unlink()
    _flip(step2 / "train_state.pt", _mid(step2 / "train_state.pt"))
    r = launch_tiny(common + ["train.max_steps=4"])
    assert r.returncode == 1 and "Traceback" not in r.stderr and (f"{step2 / 'train_state.pt'}: sha256 differs from meta.json (corrupted); no older "
                                  "intact checkpoint in the same folder") in r.stderr, r.stderr[-3000:]
    assert latest_checkpoint(out) == step2  # refused: nothing trained, nothing overwritten
