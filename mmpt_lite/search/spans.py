"""Where the search windows of a video lie: overlapping windows of the checkpoint's evaluation clip.

A window is what the MSR-VTT evaluator feeds the video tower for one clip (``num_frames`` frames at
``fps``, centre square resized to ``video_size``), so the embeddings are the ones the checkpoint was
evaluated with. Unlike the evaluator's ``num_windows`` spread over the whole video (averaged into one
vector), search keeps every window: starts every ``stride_seconds`` (half a window by default), plus one
ending at the video's end when the stride leaves its tail uncovered, so any moment is inside a window.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from mmpt_lite.evaluation.features import RetrievalProtocol, VideoRequest

# Starts and ends are rounded to this many decimals so that a rebuild reproduces the table byte for byte.
SPAN_DECIMALS = 6


@dataclass(frozen=True)
class WindowProtocol:
    """The windows one index embeds; stored in the index header and compared on every update."""

    num_frames: int
    fps: float
    video_size: int
    stride_seconds: float
    decoder: str = "pyav"

    @property
    def window_seconds(self) -> float:
        return self.num_frames / self.fps

    def retrieval_protocol(self) -> RetrievalProtocol:
        """The evaluator's protocol for one window (``decode_retrieval_windows`` with one window per request)."""
        return RetrievalProtocol(num_windows=1, num_frames=self.num_frames, fps=self.fps, video_size=self.video_size)

    def to_json(self) -> dict:
        return {**asdict(self), "window_seconds": self.window_seconds,
                "crop": "centre min(w,h) square, resized", "scaling": "uint8/255, then the model's mean/std"}

    @classmethod
    def from_json(cls, record: dict) -> WindowProtocol:
        return cls(int(record["num_frames"]), float(record["fps"]), int(record["video_size"]),
                   float(record["stride_seconds"]), str(record.get("decoder", "pyav")))

    def check(self) -> None:
        """ValueError naming the flag when a value cannot make windows."""
        for flag, value in (("--num_frames", self.num_frames), ("--video_size", self.video_size)):
            if value < 1:
                raise ValueError(f"{flag} must be at least 1, got {value}")
        if not self.fps > 0:
            raise ValueError(f"--fps must be positive, got {self.fps}")
        if not 0 < self.stride_seconds <= self.window_seconds:
            raise ValueError(f"--stride must be in (0, {self.window_seconds:g}] seconds (one window), "
                             f"got {self.stride_seconds:g}")


def window_spans(duration: float, protocol: WindowProtocol) -> list[tuple[float, float]]:
    """(start, end) seconds of each window of a ``duration``-second video, in time order.

    A video shorter than one window (or of unknown duration, 0) gets one window at 0; its frames past
    the end are zeros, as in the evaluator.
    """
    window, stride = protocol.window_seconds, protocol.stride_seconds
    if duration <= window:
        return [(0.0, round(duration if duration > 0 else window, SPAN_DECIMALS))]
    count = math.floor((duration - window) / stride + 1e-9) + 1
    starts = [round(i * stride, SPAN_DECIMALS) for i in range(count)]
    tail = round(duration - window, SPAN_DECIMALS)
    if tail > starts[-1] + 1e-6:
        starts.append(tail)
    return [(s, round(min(s + window, duration), SPAN_DECIMALS)) for s in starts]


def window_request(name: str, path: str, start: float, protocol: WindowProtocol) -> VideoRequest:
    """The evaluator's request for the one window starting at ``start``: with ``end = start + window`` its
    window placement (linspace over [start, end - window - 0.4], one window) puts it exactly at ``start``."""
    return VideoRequest(name, path, start, start + protocol.window_seconds)
