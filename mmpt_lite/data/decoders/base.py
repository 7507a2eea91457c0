"""What every decoder shares: the clip request and its frame-selection rule, frame geometry (resize and
crop planned once per clip), and the error a bad video raises.

Time convention: ``start``/``end`` are seconds of presentation time measured from the container's start
(what ``ffmpeg -ss`` and caption files use). A clip sampled at ``fps`` consists of the target times
``t_i = start + i / fps``; output frame ``i`` is the frame *shown* at ``t_i``, i.e. the frame whose presentation
interval ``[pts, next pts)`` contains ``t_i`` (timestamps are used, never frame counting, so variable-frame-rate
files come out right). With ``fps=None`` the clip is the frame shown at ``start`` followed by every later frame
(native rate). Targets at or after ``end`` or after the last frame's interval are missing.

Frames are uint8 RGB ``[H, W, 3]``.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
from collections.abc import Iterator
from typing import Literal

import av
import numpy as np

# Targets within this many seconds of a frame's pts count as "at" that frame: float sums like 0.7 + 0.1 land a
# hair below the exact frame time, and no real stream has frames closer together than a microsecond.
TIME_EPS = 1e-6
# A stream that stops this much before its declared duration is reported as truncated instead of padded.
TRUNCATION_TOLERANCE_S = 1.0

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


def apply_geometry_rgb(image: np.ndarray, geometry: FrameGeometry) -> np.ndarray:
    """Apply ``geometry`` to a full-size uint8 ``[H, W, 3]`` frame (used by backends that return RGB)."""
    return crop_box(resize_rgb(crop_box(image, geometry.source_crop), *geometry.resize), geometry.output_crop)


def crop_box(image: np.ndarray, box: tuple[int, int, int, int] | None) -> np.ndarray:
    """View of ``image`` [H, W, C] inside ``box`` = (x, y, w, h); the image itself when ``box`` is None."""
    if box is None:
        return image
    x, y, w, h = box
    return image[y:y + h, x:x + w]


@dataclasses.dataclass(frozen=True)
class ClipRequest:
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
            return max(0, math.ceil((self.end - self.start) * self.fps - TIME_EPS))
        return None

    def target(self, i: int) -> float:
        return self.start + i / self.fps

    def before_end(self, t: float) -> bool:
        return self.end is None or t < self.end - TIME_EPS


def select_frames(frames: Iterator[tuple[float, float, object]], req: ClipRequest) -> Iterator[object]:
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
        while (limit is None or i < limit) and req.target(i) < t - TIME_EPS:
            if not req.before_end(req.target(i)):
                return
            yield prev if prev is not None else frame
            i += 1
        if limit is not None and i >= limit:
            return
        prev, prev_end = frame, t + duration
    while prev is not None and (limit is None or i < limit):   # the last frame covers [pts, pts + duration)
        t = req.target(i)
        if t >= prev_end - TIME_EPS or not req.before_end(t):
            return
        yield prev
        i += 1


def _select_native(frames: Iterator[tuple[float, float, object]], req: ClipRequest) -> Iterator[object]:
    """Native rate: the frame on screen at ``start``, then every later frame (one frame of lookahead tells
    whether a frame is still on screen at ``start``)."""
    emitted, prev, prev_t = 0, None, 0.0

    def wanted(t: float) -> bool:
        return (req.length is None or emitted < req.length) and req.before_end(max(t, req.start))

    for t, _, frame in frames:
        if prev is not None and t > req.start + TIME_EPS:
            if not wanted(prev_t):
                return
            yield prev
            emitted += 1
        prev, prev_t = frame, t
    if prev is not None and wanted(prev_t):
        yield prev


def check_path(path) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise VideoDecodeError(path, "file not found")
    if os.path.isdir(path):
        raise VideoDecodeError(path, "is a directory, not a video file")
    if os.path.getsize(path) == 0:
        raise VideoDecodeError(path, "empty file (0 bytes)")
    return path


def source_name(source: Source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return getattr(source, "name", None) or f"<{type(source).__name__} video>"


def plan_geometry(name: str, transform: SpatialTransform | None, width: int, height: int,
          rng: np.random.Generator | None) -> FrameGeometry:
    try:
        return (transform or SpatialTransform()).plan(width, height, rng)
    except ValueError as err:
        raise VideoDecodeError(name, str(err)) from err


def select_indices(starts: np.ndarray, ends: np.ndarray, req: ClipRequest) -> list[int]:
    """Frame indices for ``req`` given per-frame presentation intervals ``[starts, ends)`` (seconds)."""
    if len(starts) == 0:
        return []
    shown = int(np.clip(np.searchsorted(starts, req.start + TIME_EPS, side="right") - 1, 0, None))
    if req.fps is None:
        indices = range(shown, len(starts) if req.length is None else min(len(starts), shown + req.length))
        return [i for i in indices if i == shown or req.before_end(starts[i])]
    limit = req.length if req.length is not None else int((ends[-1] - req.start) * req.fps) + 1
    targets = req.start + np.arange(limit) / req.fps
    keep = targets < ends[-1] - TIME_EPS
    if req.end is not None:
        keep &= targets < req.end - TIME_EPS
    targets = targets[keep]   # targets increase, so this keeps a prefix
    return np.clip(np.searchsorted(starts, targets + TIME_EPS, side="right") - 1, 0, None).tolist()
