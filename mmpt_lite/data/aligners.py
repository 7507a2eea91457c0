"""Aligners: choose which span of a video and which captions form one training sample.

Pure functions over caption arrays (``starts``/``ends`` float seconds, sorted by start, as the
caption stores return them); every random choice comes from the ``rng`` passed in, so a sample is
a function of (video, rng seed) and a resumed run redraws exactly the same samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ClipChoice:
    """One training sample's spans.

    clip_start: first frame time (s); the clip covers [clip_start, clip_start + num_frames / fps).
    caption_ids: indices of the K caption candidates (may repeat for videos with < K captions).
    span: the (start, end) the clip was drawn from (the anchor caption widened to min_time).
    """

    clip_start: float
    caption_ids: np.ndarray  # int64 [K]
    span: tuple[float, float]


def nearest_candidates(starts: np.ndarray, ends: np.ndarray, anchor: int, k: int) -> int:
    """Index of the first of K temporally contiguous captions around ``anchor`` with the smallest span.

    Grows a window [lo, hi] from the anchor one caption at a time, each time taking the side
    (previous or next caption) that keeps ``ends[hi] - starts[lo]`` smaller, as MIL-NCE does.
    At the edges of the caption list the window is shifted to stay K long when possible.
    """
    n = len(starts)
    lo = hi = anchor
    for _ in range(min(k, n) - 1):
        if lo == 0:
            hi += 1
        elif hi == n - 1:
            lo -= 1
        elif ends[hi] - starts[lo - 1] < ends[hi + 1] - starts[lo]:
            lo -= 1
        else:
            hi += 1
    return lo


def widen_span(start: float, end: float, min_time: float, duration: float | None = None) -> tuple[float, float]:
    """Widen [start, end] symmetrically to at least ``min_time`` seconds, kept inside [0, duration]."""
    if end - start < min_time:
        start = max(0.0, start - (min_time - (end - start)) / 2)
        end = start + min_time
    if duration is not None and end > duration:
        start, end = max(0.0, duration - max(min_time, end - start)), duration
    return start, end


def milnce_sample(starts: np.ndarray, ends: np.ndarray, rng: np.random.Generator, *, num_candidates: int,
                  min_time: float, clip_seconds: float, duration: float | None = None, part: int = 0,
                  parts: int = 1) -> ClipChoice:
    """MIL-NCE sampling: a random anchor caption, its K nearest contiguous captions, a clip inside its span.

    The clip span is the anchor caption's span widened to ``min_time``; the clip (``clip_seconds``
    long, e.g. 16 frames at 5 fps = 3.2 s) starts uniformly at random inside it. With ``parts`` > 1 the
    anchor is drawn from the ``part``-th of ``parts`` equal runs of captions, so several clips of one
    video in a batch come from different moments (different steps) of it.
    """
    n = len(starts)
    if n == 0:
        raise ValueError("video has no captions")
    if not 0 <= part < parts:
        raise ValueError(f"part {part} is not in [0, {parts})")
    if parts == 1:
        anchor = int(rng.integers(n))
    else:
        lo = part * n // parts
        anchor = lo + int(rng.integers(max(1, (part + 1) * n // parts - lo)))
    first = nearest_candidates(starts, ends, anchor, num_candidates)
    caption_ids = np.clip(np.arange(first, first + num_candidates), 0, n - 1).astype(np.int64)
    span = widen_span(float(starts[anchor]), float(ends[anchor]), min_time, duration)
    latest = max(span[0], span[1] - clip_seconds)
    clip_start = float(rng.uniform(span[0], latest)) if latest > span[0] else span[0]
    return ClipChoice(clip_start=clip_start, caption_ids=caption_ids, span=span)


def consecutive_sample(starts: np.ndarray, ends: np.ndarray, rng: np.random.Generator, *, num_candidates: int,
                       min_time: float, clip_seconds: float, duration: float | None = None, part: int = 0,
                       parts: int = 1) -> ClipChoice:
    """Clip ``part`` of ``parts`` consecutive caption-anchored clips (NORTON's paragraphs), in time order.

    The anchors are captions a, a+1, ..., a+parts-1 from a random first anchor a (clipped to the last caption
    when the video has fewer than ``parts``); each clip's K candidates and span are MIL-NCE's around its anchor.
    Every part draws the *whole* group from ``rng`` in one fixed order (a, then one uniform per part for the clip
    start) and keeps its own, so the ``parts`` samples of a video agree when their rngs share a seed (the loader
    gives a video's clips one seed under ``data.clip_order: consecutive``). Clip starts are made non-decreasing
    (a widened span can reach back before the previous anchor's clip), so clip j never precedes clip j-1.
    """
    n = len(starts)
    if n == 0:
        raise ValueError("video has no captions")
    if not 0 <= part < parts:
        raise ValueError(f"part {part} is not in [0, {parts})")
    first_anchor = int(rng.integers(max(1, n - parts + 1)))
    uniforms = rng.random(parts)
    anchors = np.minimum(first_anchor + np.arange(parts), n - 1)
    clip_starts = np.empty(parts)
    spans = []
    for j, anchor in enumerate(anchors):
        span = widen_span(float(starts[anchor]), float(ends[anchor]), min_time, duration)
        latest = max(span[0], span[1] - clip_seconds)
        clip_starts[j] = span[0] + uniforms[j] * (latest - span[0])
        spans.append(span)
    clip_starts = np.maximum.accumulate(clip_starts)
    anchor = int(anchors[part])
    lo = nearest_candidates(starts, ends, anchor, num_candidates)
    caption_ids = np.clip(np.arange(lo, lo + num_candidates), 0, n - 1).astype(np.int64)
    return ClipChoice(clip_start=float(clip_starts[part]), caption_ids=caption_ids, span=spans[part])


@dataclass(frozen=True)
class CropChoice:
    """A crop box (top, left, height, width) in source pixels and whether to flip horizontally."""

    top: int
    left: int
    height: int
    width: int
    flip: bool


def random_crop(height: int, width: int, size: int, rng: np.random.Generator, *, flip: bool = True) -> CropChoice:
    """A random ``size``×``size`` crop (MIL-NCE training) and a coin-flip horizontal flip."""
    top = int(rng.integers(0, height - size + 1)) if height > size else 0
    left = int(rng.integers(0, width - size + 1)) if width > size else 0
    return CropChoice(top, left, min(size, height), min(size, width), bool(flip and rng.random() < 0.5))


def multiscale_crop(height: int, width: int, rng: np.random.Generator,
                    scales: tuple[float, ...] = (1.0, 0.875, 0.75, 0.66), max_distort: int = 1,
                    flip: bool = True) -> CropChoice:
    """VideoMAE's multi-scale crop: side lengths from ``scales`` × the short side, aspect distortion
    at most ``max_distort`` scale steps apart, a random one of five fixed offsets (corners, centre).
    The caller resizes the crop to the training size."""
    base = min(height, width)
    sizes = [int(base * s) for s in scales]
    pairs = [(h, w) for i, h in enumerate(sizes) for j, w in enumerate(sizes) if abs(i - j) <= max_distort]
    ch, cw = pairs[int(rng.integers(len(pairs)))]
    dy, dx = (height - ch) // 4, (width - cw) // 4
    offsets = [(0, 0), (0, 4 * dx), (4 * dy, 0), (4 * dy, 4 * dx), (2 * dy, 2 * dx)]
    top, left = offsets[int(rng.integers(len(offsets)))]
    return CropChoice(top, left, ch, cw, bool(flip and rng.random() < 0.5))


def mae_frame_indices(total_frames: int, rng: np.random.Generator, *, num_frames: int = 16,
                      stride: int = 4) -> np.ndarray:
    """Frame indices for masked pretraining: ``num_frames`` at ``stride`` from a random start.

    Short videos repeat their last frame (indices clipped) rather than being dropped.
    Returns int64 [num_frames].
    """
    span = (num_frames - 1) * stride + 1
    start = int(rng.integers(0, total_frames - span + 1)) if total_frames > span else 0
    return np.clip(start + stride * np.arange(num_frames), 0, max(0, total_frames - 1)).astype(np.int64)


def apply_crop(frames: np.ndarray, crop: CropChoice) -> np.ndarray:
    """Crop (and flip) uint8 frames [T,H,W,3] -> [T,h,w,3] (a view when not flipped)."""
    out = frames[:, crop.top:crop.top + crop.height, crop.left:crop.left + crop.width]
    return out[:, :, ::-1] if crop.flip else out
