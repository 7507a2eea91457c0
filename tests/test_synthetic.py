"""how2-synth generator (tiny size): file formats, decodable videos, caption bounds, HMDB splits,
held-out combinations, direction really encoded in time, determinism, atomic interrupted runs, CLI."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest

from mmpt_lite.synth import plan as synthetic_plan
from mmpt_lite.synth import render as synthetic_render
from mmpt_lite.synth.corpus import LEXICON_FILE, SIZES, generate_corpus, plan_corpus

REPO = Path(__file__).resolve().parents[1]
TINY = SIZES["tiny"]
pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None,
                                reason="ffmpeg not found: apt-get install -y ffmpeg")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "how2"
    generate_corpus(out, seed=0, size="tiny", workers=2)
    return out


def _probe(path: Path) -> dict:
    result = subprocess.run(["ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams",
                             str(path)], capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def _sha256_tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _truth(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "ground_truth.jsonl").read_text().splitlines()]


def _referenced_videos(root: Path) -> dict[str, str]:
    """Every video the annotation files point to, as {relative path: expected kind}."""
    videos = {path: "mp4" for path in pd.read_csv(root / "train.csv")["video_path"]}
    for folder in ("msrvtt", "finegrained"):
        table = pd.read_csv(root / folder / "msrvtt_test.csv")
        videos.update({f"{folder}/{video_id}.mp4": "mp4" for video_id in table["video_id"]})
    youcook = pd.read_csv(root / "youcook2/validation_youcook.csv")
    videos.update({f"youcook2/validation/{task}/{video_id}.mp4": "mp4"
                   for task, video_id in zip(youcook["task"], youcook["video_id"], strict=True)})
    for split_file in (root / "hmdb51/testTrainMulti_7030_splits").glob("*_test_split1.txt"):
        action = split_file.name.removesuffix("_test_split1.txt")
        videos.update({f"hmdb51/{action}/{line.split()[0]}": "avi" for line in split_file.read_text().splitlines()})
    for split in ("train", "val"):
        lines = (root / f"kinetics/{split}.txt").read_text().splitlines()
        videos.update({f"kinetics/{line.split()[0]}": "mp4" for line in lines})
    for split in ("train", "validation"):
        entries = json.loads((root / f"ssv2/{split}.json").read_text())
        videos.update({f"ssv2/videos/{entry['id']}.webm": "webm" for entry in entries})
    return videos


def test_tables_have_the_documented_columns(corpus):
    train = pd.read_csv(corpus / "train.csv")
    assert list(train.columns) == ["video_path"] and len(train) == TINY.train_videos
    for path in train["video_path"]:
        captions = pd.read_csv(corpus / "captions" / f"{Path(path).stem}.csv")
        assert list(captions.columns) == ["start", "end", "text"] and len(captions) >= 3
        assert captions["text"].map(lambda s: isinstance(s, str) and s.strip() != "").all()
    for folder in ("msrvtt", "finegrained"):
        table = pd.read_csv(corpus / folder / "msrvtt_test.csv")
        assert list(table.columns) == ["key", "vid_key", "video_id", "sentence"]
        assert table["video_id"].is_unique and table["key"].str.fullmatch(r"ret\d+").all()
        assert (table["vid_key"].str.removeprefix("msr") == table["video_id"].str.removeprefix("video")).all()
    assert len(pd.read_csv(corpus / "msrvtt/msrvtt_test.csv")) == TINY.msrvtt_clips
    youcook = pd.read_csv(corpus / "youcook2/validation_youcook.csv")
    assert list(youcook.columns) == ["end", "start", "task", "text", "video_id"]
    assert all(pd.api.types.is_integer_dtype(youcook[c]) for c in ("end", "start", "task"))
    assert (youcook["start"] < youcook["end"]).all() and youcook["video_id"].nunique() == TINY.youcook_videos
    classes = (corpus / "kinetics/classes.txt").read_text().split()
    for split in ("train", "val"):
        for line in (corpus / f"kinetics/{split}.txt").read_text().splitlines():
            path, label = line.split(" ")
            assert path.endswith(".mp4") and 0 <= int(label) < len(classes) and f"/{classes[int(label)]}/" in path
    labels = json.loads((corpus / "ssv2/labels.json").read_text())
    assert sorted(int(v) for v in labels.values()) == list(range(len(labels)))
    for split in ("train", "validation"):
        for entry in json.loads((corpus / f"ssv2/{split}.json").read_text()):
            assert set(entry) == {"id", "label", "template", "placeholders"}
            assert entry["template"].replace("[", "").replace("]", "") in labels
            assert entry["label"] == entry["template"].replace("[something]", entry["placeholders"][0]).lower()
    manifest = json.loads((corpus / "manifest.json").read_text())
    on_disk = _sha256_tree(corpus)
    del on_disk["manifest.json"], on_disk[LEXICON_FILE]  # the lexicon is derived from the code, not the settings
    assert {rel: info["sha256"] for rel, info in manifest["files"].items()} == on_disk
    assert len(_truth(corpus)) == len(_referenced_videos(corpus))


def test_every_video_decodes_with_the_right_codec_and_size(corpus):
    referenced = _referenced_videos(corpus)
    on_disk = {str(p.relative_to(corpus)) for p in corpus.rglob("*") if p.suffix in (".mp4", ".avi", ".webm")}
    assert set(referenced) == on_disk
    frames_expected = {record["path"]: record["num_frames"] for record in _truth(corpus)}
    for rel, kind in referenced.items():
        codec, container_name = {"mp4": ("h264", "mp4"), "avi": ("mpeg4", "avi"), "webm": ("vp9", "webm")}[kind]
        with av.open(str(corpus / rel)) as container:
            (stream,) = container.streams
            assert stream.codec_context.name == codec and container_name in container.format.name, rel
            assert stream.height == 240 and (stream.width == 320 or kind == "webm"), rel
            assert sum(1 for _ in container.decode(video=0)) == frames_expected[rel], rel


def test_caption_and_segment_times_lie_inside_the_video(corpus):
    for path in pd.read_csv(corpus / "train.csv")["video_path"]:
        duration = float(_probe(corpus / path)["format"]["duration"])
        captions = pd.read_csv(corpus / "captions" / f"{Path(path).stem}.csv")
        assert (captions["start"] >= 0).all() and (captions["start"] <= captions["end"]).all()
        assert (captions["end"] <= duration + 1e-6).all(), path
    youcook = pd.read_csv(corpus / "youcook2/validation_youcook.csv")
    for (task, video_id), segments in youcook.groupby(["task", "video_id"]):
        duration = float(_probe(corpus / f"youcook2/validation/{task}/{video_id}.mp4")["format"]["duration"])
        assert (segments["start"] >= 0).all() and (segments["end"] <= duration).all()


def test_hmdb_split_files_list_each_video_once(corpus):
    class_dirs = [d for d in (corpus / "hmdb51").iterdir() if d.name != "testTrainMulti_7030_splits"]
    assert len(class_dirs) == TINY.hmdb_classes
    for class_dir in class_dirs:
        videos = sorted(p.name for p in class_dir.glob("*.avi"))
        assert len(videos) == TINY.hmdb_per_class
        test_sets = []
        for split in (1, 2, 3):
            lines = (corpus / f"hmdb51/testTrainMulti_7030_splits/{class_dir.name}_test_split{split}.txt").read_text()
            names, codes = zip(*(line.split() for line in lines.splitlines()), strict=True)
            assert sorted(names) == videos and set(codes) <= {"0", "1", "2"} and {"1", "2"} <= set(codes)
            test_sets.append({n for n, c in zip(names, codes, strict=True) if c == "2"})
        assert len({frozenset(s) for s in test_sets}) == 3


def test_heldout_combinations_only_in_evaluation_sets(corpus):
    manifest = json.loads((corpus / "manifest.json").read_text())
    assert len(manifest["heldout"]["shape_action"]) == 3 and len(manifest["heldout"]["colour_shape"]) == 3
    records = _truth(corpus)
    assert not any(r["heldout"] for r in records if r["split"] == "train")
    msrvtt = [bool(r["heldout"]) for r in records if r["split"] == "msrvtt"]
    assert any(msrvtt) and not all(msrvtt)
    assert manifest["heldout_clips"]["train"] == 0 and manifest["heldout_clips"]["msrvtt"] == sum(msrvtt)


def test_finegrained_pairs_differ_only_in_direction_or_colour(corpus):
    directional = {"left", "right", "leftwards", "rightwards", "up", "down", "upwards", "downwards", "top", "bottom",
                   "rises", "sinks", "clockwise", "anticlockwise", "counterclockwise", "grows", "shrinks", "bigger",
                   "smaller", "larger", "expands", "contracts"}
    table = pd.read_csv(corpus / "finegrained/msrvtt_test.csv").set_index("video_id")
    pairs: dict[int, list[dict]] = {}
    for record in _truth(corpus):
        if record["split"] == "finegrained":
            pairs.setdefault(record["pair"], []).append(record)
    assert len(pairs) == TINY.finegrained_pairs
    for twins in pairs.values():
        first, second = (table.loc[r["video_id"], "sentence"].split() for r in twins)
        assert len(first) == len(second)
        changed = {w for a, b in zip(first, second, strict=True) if a != b for w in (a, b)}
        allowed = set(synthetic_render.COLOURS) if twins[0]["pair_kind"] == "colour" else directional
        assert changed and changed <= allowed, (first, second)


def _centroid_x(frames: list[np.ndarray], rgb: tuple[int, int, int]) -> np.ndarray:
    """Per-frame mean x of pixels close to the object's colour, [T]."""
    xs = []
    for frame in frames:
        near = np.abs(frame.astype(np.int32) - np.array(rgb)).sum(-1) < 90
        xs.append(np.nonzero(near)[1].mean() if near.sum() > 30 else np.nan)
    return np.array(xs)


def test_direction_is_encoded_in_frame_order(corpus):
    """A 'move_left' clip played backwards moves right: a single frame cannot tell the two apart."""
    def clean_move_left(record):  # one step, moving left, the only object of its colour
        objects = record["steps"][0]["objects"] if len(record["steps"]) == 1 else [{"action": None}]
        colours = [o.get("colour") for o in objects]
        return objects[0]["action"] == "move_left" and colours.count(colours[0]) == 1
    record = next(r for r in _truth(corpus) if clean_move_left(r))
    with av.open(str(corpus / record["path"])) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    rgb = synthetic_render.COLOURS[record["steps"][0]["objects"][0]["colour"]]
    forward, backward = _centroid_x(frames, rgb), _centroid_x(frames[::-1], rgb)
    assert not np.isnan(forward).any()
    width = record["width"]
    assert forward[-1] - forward[0] < -0.25 * width and backward[-1] - backward[0] > 0.25 * width
    assert np.polyfit(np.arange(len(backward)), backward, 1)[0] > 0


def test_clockwise_is_clockwise_on_screen():
    """A triangle's apex (straight up at angle 0) turned 30 degrees clockwise points up and to the right."""
    frame = np.zeros((100, 100, 3), np.uint8)
    synthetic_render.draw_shape(frame, "triangle", np.array([255.0, 0, 0]), "solid", 50, 50, 40, angle=30)
    top_row = np.nonzero(frame[..., 0].any(axis=1))[0][0]
    assert np.nonzero(frame[top_row, :, 0])[0].mean() > 60
    motion = synthetic_render.plan_motion("rotate_clockwise", (0, 0, 320, 240), 40, 4.0, np.random.default_rng(0))
    assert motion.state(1.0, 4.0)[3] > motion.state(0.0, 4.0)[3]


def test_interrupted_run_leaves_no_corpus_and_rerun_is_byte_identical(corpus, tmp_path):
    out = tmp_path / "how2"
    code = f"from mmpt_lite.synth.corpus import generate_corpus; generate_corpus({str(out)!r}, 0, 'tiny', 2)"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob("how2.tmp-*/videos/*.mp4")) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the generator, its workers and their ffmpeg
        proc.wait()
    assert list(tmp_path.glob("how2.tmp-*")), "the interrupted build folder should still be there"
    assert not (out / "manifest.json").exists()

    summary = generate_corpus(out, seed=0, size="tiny", workers=2)
    assert not summary["reused"] and not list(tmp_path.glob("how2.tmp-*"))
    assert _sha256_tree(out) == _sha256_tree(corpus)


def test_a_different_seed_gives_different_files(corpus, tmp_path):
    """Checked on the plan's text files and one rendered video per container (a full second corpus is slow)."""
    other = plan_corpus(seed=1, size="tiny")
    assert other.files["train.csv"] != (corpus / "train.csv").read_text()
    assert other.files["msrvtt/msrvtt_test.csv"] != (corpus / "msrvtt/msrvtt_test.csv").read_text()
    ours = {info["sha256"] for info in json.loads((corpus / "manifest.json").read_text())["files"].values()}
    for suffix in (".mp4", ".avi", ".webm"):
        spec = next(s for s in other.specs if s.rel_path.endswith(suffix))
        assert synthetic_render.render_video(spec, str(tmp_path))[1] not in ours


def test_random_train_hue_changes_only_the_training_videos_hue():
    """train_hue="random": one independent hue per training video (no task cue); everything else as planned."""
    by_task, random_hue = plan_corpus(seed=0, size="default"), plan_corpus(seed=0, size="default", train_hue="random")
    task_of = {r["path"]: r["task"] for r in by_task.truth if r["split"] == "train"}
    task_hue = {number: hue for number, _, hue, _ in synthetic_plan.TASKS}

    def circular(a, b):
        return min(abs(a - b), 1 - abs(a - b))

    changed = 0
    for ours, theirs in zip(by_task.specs, random_hue.specs, strict=True):
        if ours.rel_path in task_of:
            assert circular(ours.hue, task_hue[task_of[ours.rel_path]]) <= 0.04 + 1e-9
            assert dataclasses.replace(ours, hue=0.0) == dataclasses.replace(theirs, hue=0.0)
            changed += circular(theirs.hue, task_hue[task_of[ours.rel_path]]) > 0.04
        else:
            assert ours == theirs
    assert changed > 0.8 * len(task_of)  # ~92% of uniform draws fall outside a task's +-0.04 band
    assert by_task.files == random_hue.files and by_task.truth == random_hue.truth
    with pytest.raises(ValueError, match="train_hue 'scene'"):
        plan_corpus(seed=0, size="tiny", train_hue="scene")


def test_more_training_videos_extend_the_corpus_and_leave_the_evaluation_sets_alone():
    """train_videos=N: videos 0..n-1 are the preset's, the rest are new; every evaluation split is unchanged."""
    preset, larger = plan_corpus(seed=0, size="tiny"), plan_corpus(seed=0, size="tiny", train_videos=10)
    assert (preset.counts["train"], larger.counts["train"]) == (6, 10)

    def videos(plan, training: bool):
        """(ground-truth record, spec) pairs of the training split, or of every other split."""
        return [(record, spec) for record, spec in zip(plan.truth, plan.specs, strict=True)
                if (record["split"] == "train") == training]

    def evaluation_files(plan):
        return {k: v for k, v in plan.files.items() if not k.startswith(("captions/", "train.csv", "ground_truth"))}

    assert videos(larger, True)[:6] == videos(preset, True)
    assert len({record["path"] for record, _ in videos(larger, True)}) == 10
    assert videos(larger, False) == videos(preset, False)
    assert larger.files["train.csv"].splitlines()[:7] == preset.files["train.csv"].splitlines()
    assert evaluation_files(larger) == evaluation_files(preset)
    assert plan_corpus(seed=0, size="tiny", train_videos=0).files == preset.files
    with pytest.raises(ValueError, match="train_videos must be a non-negative integer, got -1"):
        plan_corpus(seed=0, size="tiny", train_videos=-1)


def test_rerun_on_a_complete_corpus_returns_quickly_and_foreign_folders_are_refused(corpus, tmp_path):
    began = time.monotonic()
    assert generate_corpus(corpus, seed=0, size="tiny")["reused"]
    assert time.monotonic() - began < 2.0
    with pytest.raises(FileExistsError, match="seed=0"):
        generate_corpus(corpus, seed=1, size="tiny")
    with pytest.raises(FileExistsError, match="train_hue=task train_videos=6, not .* train_hue=random"):
        generate_corpus(corpus, seed=0, size="tiny", train_hue="random")
    with pytest.raises(FileExistsError, match="train_videos=6, not .* train_videos=7"):
        generate_corpus(corpus, seed=0, size="tiny", train_videos=7)
    (tmp_path / "notes.txt").write_text("not a corpus")
    with pytest.raises(FileExistsError, match="no manifest.json"):
        generate_corpus(tmp_path, seed=0, size="tiny")


def test_missing_ffmpeg_is_reported(monkeypatch, tmp_path):
    monkeypatch.setattr(synthetic_render.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="ffmpeg not found: apt-get install -y ffmpeg"):
        generate_corpus(tmp_path / "none", seed=0, size="tiny")
    assert not list(tmp_path.iterdir())


def test_cli_reuses_a_corpus_and_reports_errors_in_one_line(corpus, tmp_path):
    script = [sys.executable, str(REPO / "scripts/make_synthetic.py")]
    ok = subprocess.run([*script, "--out", str(corpus), "--size", "tiny"], capture_output=True, text=True)
    assert ok.returncode == 0 and "reused" in ok.stdout
    (tmp_path / "file").write_text("x")
    bad = subprocess.run([*script, "--out", str(tmp_path / "file"), "--size", "tiny"], capture_output=True, text=True)
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1
