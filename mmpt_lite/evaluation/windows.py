"""Where the evaluation windows start (the MIL-NCE test-time sampling), as pure functions.

Retrieval (MSR-VTT, YouCook2) places windows in *time*: ``num_windows`` starts spread by linspace
over [start, end - clip_seconds - 0.4], each decoded for ``clip_seconds + 0.1`` at ``fps`` and
zero-padded / truncated to ``num_frames``. The HMDB-51 probe places windows in *frames* of the whole
video decoded at native fps: starts linspace(0, T - num_frames), ``num_frames`` contiguous frames each.
"""

from __future__ import annotations

import numpy as np

# MIL-NCE stops the last window 0.4 s before the end (so ffmpeg's -ss lands inside the stream) and
# decodes each window 0.1 s longer than num_frames / fps (so the fps filter yields num_frames frames).
END_MARGIN_SECONDS = 0.4
DECODE_SLACK_SECONDS = 0.1


def retrieval_window_starts(start: float, end: float, num_windows: int, num_frames: int,
                            fps: float) -> np.ndarray:
    """float64 [num_windows]: linspace(start, max(start, end - num_frames/fps - 0.4), num_windows)."""
    if num_windows < 1 or num_frames < 1 or fps <= 0:
        raise ValueError(f"need num_windows, num_frames >= 1 and fps > 0 "
                         f"(got {num_windows}, {num_frames}, {fps})")
    clip_seconds = num_frames / fps
    return np.linspace(start, max(start, end - clip_seconds - END_MARGIN_SECONDS), num_windows)


def retrieval_window_span(window_start: float, num_frames: int, fps: float) -> tuple[float, float]:
    """(start, end) seconds decoded for one retrieval window."""
    return window_start, window_start + num_frames / fps + DECODE_SLACK_SECONDS


def frame_window_starts(total_frames: int, num_frames: int, num_windows: int) -> np.ndarray:
    """int64 [num_windows]: first frame index of each probe window, linspace(0, T - num_frames).

    A video shorter than ``num_frames`` gets every window at 0 (zero-padded by :func:`cut_frame_windows`).
    """
    if num_windows < 1 or num_frames < 1:
        raise ValueError(f"need num_windows, num_frames >= 1 (got {num_windows}, {num_frames})")
    last = max(0, total_frames - num_frames)
    return np.linspace(0, last, num_windows).astype(np.int64)


def cut_frame_windows(frames: np.ndarray, starts: np.ndarray, num_frames: int) -> np.ndarray:
    """Stack windows of contiguous frames, zero-padding past the end.

    Args:
        frames: uint8 [T, H, W, 3].
        starts: int [n] first frame of each window.
    Returns:
        uint8 [n, num_frames, H, W, 3].
    """
    return np.stack([pad_or_trim(frames[first:first + num_frames], num_frames) for first in starts])


def pad_or_trim(frames: np.ndarray, num_frames: int) -> np.ndarray:
    """uint8 [t, H, W, 3] -> [num_frames, H, W, 3]: keep the first frames, zero-pad the rest."""
    if frames.shape[0] >= num_frames:
        return frames[:num_frames]
    out = np.zeros((num_frames, *frames.shape[1:]), dtype=frames.dtype)
    out[:frames.shape[0]] = frames
    return out
