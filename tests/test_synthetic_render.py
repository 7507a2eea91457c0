"""how2-synth render setting (short side, fps) and set selection: the same scene drawn smaller and slower,
only the chosen sets written (byte-identical to a full corpus at that setting), the setting in the
corpus identity, progress lines, and the run config's validation."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from mmpt_lite.config import ConfigError, config_from_dict, load_config
from mmpt_lite.data.prepare import ensure_corpus
from mmpt_lite.synth.corpus import check_corpus, generate_corpus, plan_corpus
from mmpt_lite.synth.render import render_frames

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not found: apt-get install -y ffmpeg")
SMALL = {"short_side": 64, "fps": 5}


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """The tiny corpus, every set, drawn at short side 64 and 5 fps (~2 s)."""
    out = tmp_path_factory.mktemp("small") / "how2"
    generate_corpus(out, seed=0, size="tiny", workers=2, **SMALL)
    return out


def _area_halve(frame: np.ndarray) -> np.ndarray:
    h, w = frame.shape[0] // 2, frame.shape[1] // 2
    return frame.astype(np.float32).reshape(h, 2, w, 2, 3).mean(axis=(1, 3))


def test_a_smaller_slower_render_draws_the_same_scene():
    """Short side 120 (an exact halving of 320x240) at 5 fps: every frame is the native frame at the same
    instant, downscaled, to within a few grey levels (only edge pixels differ); the plan's text is unchanged."""
    native, half = plan_corpus(0, "tiny"), plan_corpus(0, "tiny", short_side=120, fps=5)
    assert {k: v for k, v in native.files.items() if k != "ground_truth.jsonl"} == \
        {k: v for k, v in half.files.items() if k != "ground_truth.jsonl"}
    checked = 0
    for big, small in zip(native.specs, half.specs, strict=True):
        assert small.height == 120 and small.width % 2 == 0 and abs(small.width - big.width / 2) <= 1
        assert small.fps == 5
        assert small.num_frames == round(big.num_frames * 5 / big.fps)  # same duration
        if not big.rel_path.startswith(("videos/", "msrvtt/", "hmdb51/")) or big.fps % 5:
            continue
        step = big.fps // 5
        big_frames = [frame.copy() for i, frame in enumerate(render_frames(big)) if i % step == 0]
        small_frames = [frame.copy() for frame in render_frames(small)]
        assert len(big_frames) == len(small_frames)
        for k in range(0, len(small_frames), max(1, len(small_frames) // 6)):
            diff = np.abs(_area_halve(big_frames[k]) - small_frames[k])
            assert diff.mean() < 3.0, (big.rel_path, k, diff.mean())
        checked += 1
    assert checked >= 10
    records = [json.loads(line) for line in half.files["ground_truth.jsonl"].splitlines()]
    assert {(r["width"], r["height"], r["fps"]) for r in records} == {(160, 120, 5), (212, 120, 5)}


def test_short_side_64_files_have_the_asked_size_and_rate(small):
    """86x64 (320x240 scaled, long side rounded to even), 5 fps, the planned duration, in every container."""
    truth = {r["path"]: r for r in map(json.loads, (small / "ground_truth.jsonl").read_text().splitlines())}
    for rel in ("msrvtt/video7010.mp4", next(p for p in truth if p.endswith(".avi")),
                next(p for p in truth if p.endswith(".webm"))):
        with av.open(str(small / rel)) as container:
            stream = container.streams.video[0]
            frames = sum(1 for _ in container.decode(stream))
            assert (stream.codec_context.width, stream.codec_context.height) == (truth[rel]["width"], 64)
            assert stream.average_rate == 5 and frames == truth[rel]["num_frames"]
    assert {r["width"] for r in truth.values()} == {86, 114}  # 320 and 426 wide scenes


def test_chosen_sets_are_the_full_corpus_files_and_nothing_else(small, tmp_path, caplog):
    out = tmp_path / "part"
    with caplog.at_level(logging.INFO, logger="mmpt_lite"):
        summary = generate_corpus(out, seed=0, size="tiny", workers=1, sets=["msrvtt", "hmdb51"],
                                  progress_every=1e-9, **SMALL)
    ours, full = _files(out), _files(small)
    assert {rel.split("/")[0] for rel in ours} == {"msrvtt", "hmdb51", "ground_truth.jsonl", "manifest.json",
                                                   "actions.tsv"}
    for rel, digest in ours.items():
        if rel not in ("ground_truth.jsonl", "manifest.json"):
            assert full[rel] == digest, rel
    lines = (out / "ground_truth.jsonl").read_text().splitlines()
    assert {json.loads(line)["split"] for line in lines} == {"msrvtt", "hmdb51"}
    assert set(lines) <= set((small / "ground_truth.jsonl").read_text().splitlines())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sets"] == ["msrvtt", "hmdb51"] and manifest["render"] == SMALL
    assert set(manifest["counts"]) == {"msrvtt", "hmdb51"} == set(summary["counts"])
    progress = [r.getMessage() for r in caplog.records if "videos/s" in r.getMessage()]
    assert progress and all("ETA" in line for line in progress[:-1])
    assert progress[0].startswith("how2-synth: rendered 1/15 videos")


def test_a_corpus_made_with_another_render_setting_or_sets_is_refused_in_one_line(small, tmp_path):
    with pytest.raises(FileExistsError, match=r"short_side=64 fps=5 sets=all .*, not .* short_side=native "
                                              r"fps=native sets=all") as error:
        generate_corpus(small, seed=0, size="tiny")
    assert "\n" not in str(error.value)
    with pytest.raises(FileExistsError, match=r"fps=5 .*, not .* fps=10"):
        generate_corpus(small, seed=0, size="tiny", short_side=64, fps=10)
    with pytest.raises(FileExistsError, match=r"sets=all .*, not .* sets=train,msrvtt"):
        generate_corpus(small, seed=0, size="tiny", sets=["msrvtt", "train"], **SMALL)
    assert generate_corpus(small, seed=0, size="tiny", **SMALL)["reused"]
    # An existing corpus folder is checked without planning (the run's ensure_corpus).
    check_corpus(small, seed=0, size="tiny", **SMALL)
    with pytest.raises(FileExistsError, match="short_side=64 .*, not .* short_side=native"):
        check_corpus(small, seed=0, size="tiny")
    cfg = config_from_dict({"data": {"root": str(small), "synthetic": {"size": "tiny", "train_hue": "task"}}})
    with pytest.raises(FileExistsError, match="short_side=64 fps=5 .*, not .* short_side=native fps=native"):
        ensure_corpus(cfg, small, build=True)
    script = [sys.executable, str(REPO / "scripts/make_synthetic.py"), "--out", str(tmp_path / "x"), "--size", "tiny"]
    for bad in (["--short_side", "63"], ["--sets", "train,imagenet"]):
        result = subprocess.run([*script, *bad], capture_output=True, text=True)
        assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize(("yaml", "message"), [
    ("render: {short_side: 63}", r"data\.synthetic\.render\.short_side: 63 must be 0 \(native\) or a positive even"),
    ("render: {short_side: -64}", r"data\.synthetic\.render\.short_side: -64"),
    ("render: {fps: -5}", r"data\.synthetic\.render\.fps: -5"),
    ("sets: [train, imagenet]", r"data\.synthetic\.sets: \['train', 'imagenet'\] must be 'all' or a non-empty list"),
    ("sets: []", r"data\.synthetic\.sets: \[\]"),
])
def test_config_rejects_bad_render_settings_and_sets_at_load(tmp_path, yaml, message):
    path = tmp_path / "run.yaml"
    path.write_text(f"data: {{synthetic: {{{yaml}}}}}\n")
    with pytest.raises(ConfigError, match=message) as error:
        load_config(path)
    assert str(path) in str(error.value)


def test_config_render_settings_reach_the_generator(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data: {synthetic: {render: {short_side: 64, fps: 5}, sets: [train, msrvtt, youcook2, hmdb51]}}\n")
    synthetic = load_config(path).data.synthetic
    assert (synthetic.render.short_side, synthetic.render.fps) == (64, 5)
    assert load_config(path, ["data.synthetic.sets=all"]).data.synthetic.sets == "all"
