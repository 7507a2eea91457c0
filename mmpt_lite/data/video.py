"""Frame-accurate video decoding: probe a file, read a clip at a fixed sampling rate, or every frame.

Time convention: ``start``/``end`` are seconds of presentation time measured from the container's start
(what ``ffmpeg -ss`` and caption files use). A clip sampled at ``fps`` consists of the target times
``t_i = start + i / fps``; output frame ``i`` is the frame *shown* at ``t_i``, i.e. the frame whose presentation
interval ``[pts, next pts)`` contains ``t_i`` (timestamps are used, never frame counting, so variable-frame-rate
files come out right). With ``fps=None`` the clip is the frame shown at ``start`` followed by every later frame
(native rate). Targets at or after ``end`` or after the last frame's interval are missing: they are zero frames
when ``pad=True`` and dropped otherwise.

Backends: ``"pyav"`` (default: seek to the keyframe before ``start``, decode forward, select by pts),
``"ffmpeg"`` (one ``ffmpeg`` subprocess per clip, the MIL-NCE loader's style, same selection rule through the
``fps`` filter), and the optional ``"decord"`` / ``"torchcodec"`` (used only when importable).

Arrays are uint8 RGB, ``[T, H, W, 3]``.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import math
import os
from collections.abc import Iterator
from typing import Literal

import av
import numpy as np

BACKENDS = ("pyav", "ffmpeg", "decord", "torchcodec")

# Targets within this many seconds of a frame's pts count as "at" that frame: float sums like 0.7 + 0.1 land a
# hair below the exact frame time, and no real stream has frames closer together than a microsecond.
_TIME_EPS = 1e-6
# A stream that stops this much before its declared duration is reported as truncated instead of padded.
_TRUNCATION_TOLERANCE_S = 1.0

Source = str | os.PathLike | bytes | io.IOBase


class VideoDecodeError(RuntimeError):
    """A video could not be read; ``str(err)`` is ``"<file>: <reason>"``."""

    def __init__(self, path, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{self.path}: {reason}")


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    path: str
    duration: float        # seconds (video stream duration when known, else the container's)
    fps: float             # average frame rate
    num_frames: int        # from the container index when present, else round(duration * fps)
    width: int
    height: int
    codec: str
    start_time: float = 0.0  # container start (s) in the file's own timestamps: time 0 of start/end


@dataclasses.dataclass(frozen=True)
class FrameGeometry:
    """One clip's resolved geometry; every frame of a clip gets the same one (same random crop).

    Pipeline: ``source_crop`` (x, y, w, h in source pixels) -> resize to ``resize`` (width, height) ->
    ``output_crop`` (x, y, w, h in resized pixels).
    """

    source_crop: tuple[int, int, int, int] | None
    resize: tuple[int, int]
    output_crop: tuple[int, int, int, int] | None

    @property
    def out_hw(self) -> tuple[int, int]:
        box = self.output_crop
        return (box[3], box[2]) if box is not None else (self.resize[1], self.resize[0])


@dataclasses.dataclass(frozen=True)
class SpatialTransform:
    """Resize then crop, applied during decoding.

    * ``short_side``: resize so the shorter side has this many pixels; the long side is rounded to an even
      number (ffmpeg's ``scale=-2`` convention, which yuv420p encoders need). ``None`` keeps the size.
    * ``crop`` / ``crop_mode``: a ``crop x crop`` window, centred or at a random offset (drawn once per clip).
    * ``square_center_crop_first``: MIL-NCE evaluation: cut the centred ``min(w, h)`` square first, then resize
      it to ``short_side x short_side``.
    """

    short_side: int | None = None
    crop: int | None = None
    crop_mode: Literal["center", "random", "none"] = "center"
    square_center_crop_first: bool = False

    def __post_init__(self):
        if self.crop_mode not in ("center", "random", "none"):
            raise ValueError(f"crop_mode must be 'center', 'random' or 'none', got {self.crop_mode!r}")
        for name in ("short_side", "crop"):
            if (getattr(self, name) or 1) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.crop is not None and self.short_side is not None and self.crop > self.short_side:
            raise ValueError(f"crop {self.crop} is larger than short_side {self.short_side}")

    def plan(self, width: int, height: int, rng: np.random.Generator | None = None) -> FrameGeometry:
        """Geometry for a ``width x height`` source; raises ValueError if the crop does not fit."""
        source_crop = None
        if self.square_center_crop_first:
            side = min(width, height)
            source_crop = ((width - side) // 2, (height - side) // 2, side, side)
            size = self.short_side or side
            resize = (size, size)
        elif self.short_side is not None:
            resize = _short_side_size(width, height, self.short_side)
        else:
            resize = (width, height)
        output_crop = None
        if self.crop is not None and self.crop_mode != "none":
            rw, rh = resize
            if self.crop > min(rw, rh):
                raise ValueError(f"crop {self.crop} does not fit a {rw}x{rh} frame")
            if self.crop_mode == "center":
                x, y = (rw - self.crop) // 2, (rh - self.crop) // 2
            else:
                rng = rng if rng is not None else np.random.default_rng()
                x, y = int(rng.integers(0, rw - self.crop + 1)), int(rng.integers(0, rh - self.crop + 1))
            output_crop = (x, y, self.crop, self.crop)
        return FrameGeometry(source_crop, resize, output_crop)


def _short_side_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    long_side = max(2, 2 * round(max(width, height) * short_side / min(width, height) / 2))
    return (short_side, long_side) if width <= height else (long_side, short_side)


def resize_rgb(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize one uint8 ``[H, W, 3]`` image with swscale (bilinear, area-aware when shrinking), one thread."""
    if image.shape[1] == width and image.shape[0] == height:
        return image
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
    return frame.to_ndarray(width=width, height=height, format="rgb24", interpolation="BILINEAR", threads=1)


def _apply_geometry_rgb(image: np.ndarray, geometry: FrameGeometry) -> np.ndarray:
    """Apply ``geometry`` to a full-size uint8 ``[H, W, 3]`` frame (used by backends that return RGB)."""
    return _crop(resize_rgb(_crop(image, geometry.source_crop), *geometry.resize), geometry.output_crop)


def _crop(image: np.ndarray, box: tuple[int, int, int, int] | None) -> np.ndarray:
    """View of ``image`` [H, W, C] inside ``box`` = (x, y, w, h); the image itself when ``box`` is None."""
    if box is None:
        return image
    x, y, w, h = box
    return image[y:y + h, x:x + w]


@dataclasses.dataclass(frozen=True)
class _ClipRequest:
    """Which frames a clip wants (see the module docstring)."""

    start: float
    end: float | None
    num_frames: int | None
    fps: float | None

    @property
    def length(self) -> int | None:
        """Number of output slots, or None when it is "until the video ends"."""
        if self.num_frames is not None:
            return self.num_frames
        if self.end is not None and self.fps is not None:
            return max(0, math.ceil((self.end - self.start) * self.fps - _TIME_EPS))
        return None

    def target(self, i: int) -> float:
        return self.start + i / self.fps

    def before_end(self, t: float) -> bool:
        return self.end is None or t < self.end - _TIME_EPS


def _select(frames: Iterator[tuple[float, float, object]], req: _ClipRequest) -> Iterator[object]:
    """Pick the frame shown at each target time from ``(time, duration, frame)`` in presentation order.

    Yields frame objects, one per output slot (a frame repeats when ``fps`` exceeds the native rate). A target
    before the first frame gets the first frame (as ffmpeg does).
    """
    limit = req.length
    if req.fps is None:
        yield from _select_native(frames, req)
        return
    i, prev, prev_end = 0, None, -math.inf
    for t, duration, frame in frames:
        while (limit is None or i < limit) and req.target(i) < t - _TIME_EPS:
            if not req.before_end(req.target(i)):
                return
            yield prev if prev is not None else frame
            i += 1
        if limit is not None and i >= limit:
            return
        prev, prev_end = frame, t + duration
    while prev is not None and (limit is None or i < limit):   # the last frame covers [pts, pts + duration)
        t = req.target(i)
        if t >= prev_end - _TIME_EPS or not req.before_end(t):
            return
        yield prev
        i += 1


def _select_native(frames: Iterator[tuple[float, float, object]], req: _ClipRequest) -> Iterator[object]:
    """Native rate: the frame on screen at ``start``, then every later frame (one frame of lookahead tells
    whether a frame is still on screen at ``start``)."""
    emitted, prev, prev_t = 0, None, 0.0

    def wanted(t: float) -> bool:
        return (req.length is None or emitted < req.length) and req.before_end(max(t, req.start))

    for t, _, frame in frames:
        if prev is not None and t > req.start + _TIME_EPS:
            if not wanted(prev_t):
                return
            yield prev
            emitted += 1
        prev, prev_t = frame, t
    if prev is not None and wanted(prev_t):
        yield prev


def _check_path(path) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise VideoDecodeError(path, "file not found")
    if os.path.isdir(path):
        raise VideoDecodeError(path, "is a directory, not a video file")
    if os.path.getsize(path) == 0:
        raise VideoDecodeError(path, "empty file (0 bytes)")
    return path


def _source_name(source: Source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return getattr(source, "name", None) or f"<{type(source).__name__} video>"


def _open_pyav(source: Source, threads: int):
    """Open ``source`` and return (container, video stream); raises VideoDecodeError."""
    name = _source_name(source)
    if isinstance(source, (str, os.PathLike)):
        source = _check_path(source)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(source)
    elif source.seekable():
        source.seek(0)
    try:
        container = av.open(source, metadata_errors="ignore")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as err:
        raise VideoDecodeError(name, f"cannot open as a video container ({err})") from err
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(name, "no video stream")
    stream = container.streams.video[0]
    stream.codec_context.thread_count = threads
    # Frame threading adds latency per seek; with one thread the plain slice mode is the cheapest.
    stream.thread_type = "AUTO" if threads > 1 else "SLICE"
    return container, stream


@dataclasses.dataclass(frozen=True)
class _StreamClock:
    zero: float                      # container start time (s): time 0 of the caller's timeline
    stream_duration: float | None    # from the video stream's own index (mp4), else None
    container_duration: float | None
    interval: float                  # nominal frame interval (s)

    @classmethod
    def of(cls, container, stream) -> _StreamClock:
        zero = container.start_time / av.time_base if container.start_time is not None else 0.0
        stream_duration = None
        if stream.duration is not None:
            stream_duration = float(stream.duration * stream.time_base)
            if stream.start_time is not None:
                stream_duration += float(stream.start_time * stream.time_base) - zero
        container_duration = container.duration / av.time_base if container.duration is not None else None
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        return cls(zero, stream_duration, container_duration, 1.0 / float(rate) if rate else 1.0 / 25)


def probe_video(source: Source) -> VideoInfo:
    """Container metadata without decoding any frame."""
    container, stream = _open_pyav(source, threads=1)
    try:
        clock = _StreamClock.of(container, stream)
        duration = clock.stream_duration or clock.container_duration or 0.0
        num_frames = stream.frames or round(duration / clock.interval)
        ctx = stream.codec_context
        return VideoInfo(_source_name(source), duration, 1.0 / clock.interval, int(num_frames),
                         ctx.width, ctx.height, ctx.name, clock.zero)
    finally:
        container.close()


def _pyav_frames(container, stream, clock: _StreamClock,
                 seek_to: float | None) -> Iterator[tuple[float, float, object]]:
    """Yield ``(time, duration, frame)`` decoding forward from the keyframe at or before ``seek_to`` seconds
    (``None``: from the current position, i.e. the start of a freshly opened file)."""
    tb = stream.time_base
    if seek_to is not None:   # never before the stream's first pts: some demuxers (avi) refuse that
        offset = max(int(math.floor((seek_to + clock.zero) / tb)), stream.start_time or 0)
        container.seek(offset, stream=stream, backward=True, any_frame=False)
    last_t = None
    for frame in container.decode(stream):
        if frame.pts is not None:
            t = float(frame.pts * tb) - clock.zero
        else:   # rare broken streams: continue the clock from the previous frame
            t = last_t + clock.interval if last_t is not None else 0.0
        last_t = t
        yield t, float(frame.duration * tb) if frame.duration else clock.interval, frame


def iter_clip_frames(source: Source, start: float = 0.0, end: float | None = None, *,
                     num_frames: int | None = None, fps: float | None = None,
                     transform: SpatialTransform | None = None, rng: np.random.Generator | None = None,
                     threads: int = 1) -> Iterator[np.ndarray]:
    """Stream the selected frames (uint8 ``[H, W, 3]`` each) with the PyAV backend, without padding.

    Same selection as ``read_clip``; use it to walk a long video without holding all of it in memory.
    """
    name = _source_name(source)
    req = _ClipRequest(float(start), end, num_frames, fps)
    container, stream = _open_pyav(source, threads)
    try:
        clock = _StreamClock.of(container, stream)
        geometry = _plan(name, transform, stream.codec_context.width, stream.codec_context.height, rng)
        frames = _pyav_frames(container, stream, clock, req.start if req.start > 0 else None)
        first = next(frames, None)
        if first is not None and first[0] > req.start + _TIME_EPS and req.start > 0:
            # The index sent us past the target (broken seek tables): decode from the very beginning instead.
            frames = _pyav_frames(container, stream, clock, 0.0)
        elif first is not None:
            frames = itertools.chain([first], frames)
        decoded = _LatestTime(frames)
        cached_frame, cached_array, emitted = None, None, 0
        for frame in _select(decoded, req):
            if frame is not cached_frame:   # a repeated frame (fps above the native rate) converts once
                cached_frame, cached_array = frame, _pyav_to_rgb(frame, geometry)
            emitted += 1
            yield cached_array
        _check_not_truncated(name, req, emitted, decoded.time, clock.stream_duration)
    except av.FFmpegError as err:
        raise VideoDecodeError(name, f"decoding failed ({err})") from err
    finally:
        container.close()


def _plan(name: str, transform: SpatialTransform | None, width: int, height: int,
          rng: np.random.Generator | None) -> FrameGeometry:
    try:
        return (transform or SpatialTransform()).plan(width, height, rng)
    except ValueError as err:
        raise VideoDecodeError(name, str(err)) from err


class _LatestTime:
    """Passes ``(time, duration, frame)`` items through, remembering the latest time (how far decoding got)."""

    def __init__(self, frames):
        self.frames, self.time = frames, None

    def __iter__(self):
        for item in self.frames:
            self.time = item[0]
            yield item


def _check_not_truncated(name: str, req: _ClipRequest, emitted: int, last_time: float | None,
                         stream_duration: float | None) -> None:
    """Raise when decoding stopped well before the stream's indexed duration while the clip wanted more.

    Only the video stream's own duration is trusted (mp4 index); container durations include audio, which
    is often longer, so webm/avi files without a stream duration are padded instead.
    """
    if stream_duration is None or (req.length is not None and emitted >= req.length):
        return
    wanted_until = stream_duration
    if req.fps is not None and req.length is not None:
        wanted_until = min(wanted_until, req.target(req.length - 1))
    if req.end is not None:
        wanted_until = min(wanted_until, req.end)
    reached = last_time if last_time is not None else req.start
    if wanted_until - reached > _TRUNCATION_TOLERANCE_S:
        last = "none" if last_time is None else f"{last_time:.2f}s"
        raise VideoDecodeError(name, f"frames stop before {wanted_until:.2f}s (last decoded: {last}) but the "
                                     f"stream's index says {stream_duration:.2f}s (truncated or corrupt file)")


def _pyav_to_rgb(frame, geometry: FrameGeometry) -> np.ndarray:
    if geometry.source_crop is not None:
        return _apply_geometry_rgb(frame.to_ndarray(format="rgb24", threads=1), geometry)
    width, height = geometry.resize   # scale and convert in one swscale pass
    image = frame.to_ndarray(width=width, height=height, format="rgb24", interpolation="BILINEAR", threads=1)
    return _crop(image, geometry.output_crop)


def read_clip(source: Source, start: float, end: float | None = None, *, num_frames: int | None = None,
              fps: float | None = None, transform: SpatialTransform | None = None, backend: str = "pyav",
              rng: np.random.Generator | None = None, pad: bool = True, threads: int = 1) -> np.ndarray:
    """Decode one clip; returns uint8 ``[T, H, W, 3]``.

    ``T`` = ``num_frames`` when given and ``pad`` (missing frames are zeros), else the frames found. With
    ``end`` and ``num_frames`` but no ``fps``, the ``num_frames`` targets are spread evenly over ``[start, end)``.
    ``rng`` draws the random crop offset (one per clip). ``threads`` is the decoder thread count.
    ``source`` is a path, or (pyav backend only) bytes or a binary file object.
    """
    if num_frames is not None and num_frames < 0:
        raise ValueError(f"num_frames must be >= 0, got {num_frames}")
    if fps is not None and fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if fps is None and num_frames and end is not None and end > start:
        fps = num_frames / (end - start)
    req = _ClipRequest(float(start), end, num_frames, fps)
    if backend == "pyav":
        frames = list(iter_clip_frames(source, start, end, num_frames=num_frames, fps=fps,
                                       transform=transform, rng=rng, threads=threads))
        out_hw = frames[0].shape[:2] if frames else None
    elif backend in BACKENDS:
        from mmpt_lite.data.video_backends import PATH_BACKENDS  # here: it imports this module
        if not isinstance(source, (str, os.PathLike)):
            raise ValueError(f"backend {backend!r} needs a file path, got {type(source).__name__}")
        path = _check_path(source)
        info = probe_video(path)
        geometry = _plan(path, transform, info.width, info.height, rng)
        if backend == "torchcodec" and info.start_time:   # torchcodec takes the file's own timestamps
            req = dataclasses.replace(req, start=req.start + info.start_time,
                                      end=None if end is None else end + info.start_time)
        frames = PATH_BACKENDS[backend](path, req, geometry, threads)
        out_hw = geometry.out_hw
    else:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    if out_hw is None:   # nothing decoded: the size still follows from the source and the transform
        info = probe_video(source)
        out_hw = _plan(info.path, transform, info.width, info.height, np.random.default_rng(0)).out_hw
    total = req.length if (pad and req.length is not None) else len(frames)
    clip = np.zeros((total, *out_hw, 3), np.uint8)
    for i, frame in enumerate(frames[:total]):
        clip[i] = frame
    return clip


def read_all_frames(path, fps: float | None = None, transform: SpatialTransform | None = None, *,
                    backend: str = "pyav", threads: int = 1) -> np.ndarray:
    """Every frame of a video (native rate when ``fps`` is None), uint8 ``[T, H, W, 3]`` (HMDB protocol)."""
    return read_clip(path, 0.0, None, fps=fps, transform=transform, backend=backend, pad=False, threads=threads)
