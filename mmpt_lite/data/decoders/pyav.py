"""The PyAV decoder (the default): seek to the keyframe before ``start``, decode forward, select by pts.
Also the metadata probe every decoder uses. ``source`` may be a path, bytes or a binary file object.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import math
import os
from collections.abc import Iterator

import av
import numpy as np

from mmpt_lite.data.decoders.base import (
    TIME_EPS,
    TRUNCATION_TOLERANCE_S,
    ClipRequest,
    FrameGeometry,
    Source,
    SpatialTransform,
    VideoDecodeError,
    VideoInfo,
    apply_geometry_rgb,
    check_path,
    crop_box,
    plan_geometry,
    select_frames,
    source_name,
)


def _open_pyav(source: Source, threads: int):
    """Open ``source`` and return (container, video stream); raises VideoDecodeError."""
    name = source_name(source)
    if isinstance(source, (str, os.PathLike)):
        source = check_path(source)
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
    if stream.codec_context is None:  # e.g. a truncated .mov whose moov header never arrived
        container.close()
        raise VideoDecodeError(name, "the video stream has no decoder parameters (truncated or damaged file)")
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
        return VideoInfo(source_name(source), duration, 1.0 / clock.interval, int(num_frames),
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
    name = source_name(source)
    req = ClipRequest(float(start), end, num_frames, fps)
    container, stream = _open_pyav(source, threads)
    try:
        clock = _StreamClock.of(container, stream)
        geometry = plan_geometry(name, transform, stream.codec_context.width, stream.codec_context.height, rng)
        frames = _pyav_frames(container, stream, clock, req.start if req.start > 0 else None)
        first = next(frames, None)
        if first is not None and first[0] > req.start + TIME_EPS and req.start > 0:
            # The index sent us past the target (broken seek tables): decode from the very beginning instead.
            frames = _pyav_frames(container, stream, clock, 0.0)
        elif first is not None:
            frames = itertools.chain([first], frames)
        decoded = _LatestTime(frames)
        cached_frame, cached_array, emitted = None, None, 0
        for frame in select_frames(decoded, req):
            if frame is not cached_frame:   # a repeated frame (fps above the native rate) converts once
                cached_frame, cached_array = frame, _pyav_to_rgb(frame, geometry)
            emitted += 1
            yield cached_array
        _check_not_truncated(name, req, emitted, decoded.time, clock.stream_duration)
    except av.FFmpegError as err:
        raise VideoDecodeError(name, f"decoding failed ({err})") from err
    finally:
        container.close()


class _LatestTime:
    """Passes ``(time, duration, frame)`` items through, remembering the latest time (how far decoding got)."""

    def __init__(self, frames):
        self.frames, self.time = frames, None

    def __iter__(self):
        for item in self.frames:
            self.time = item[0]
            yield item


def _check_not_truncated(name: str, req: ClipRequest, emitted: int, last_time: float | None,
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
    if wanted_until - reached > TRUNCATION_TOLERANCE_S:
        last = "none" if last_time is None else f"{last_time:.2f}s"
        raise VideoDecodeError(name, f"frames stop before {wanted_until:.2f}s (last decoded: {last}) but the "
                                     f"stream's index says {stream_duration:.2f}s (truncated or corrupt file)")


def _pyav_to_rgb(frame, geometry: FrameGeometry) -> np.ndarray:
    if geometry.source_crop is not None:
        return apply_geometry_rgb(frame.to_ndarray(format="rgb24", threads=1), geometry)
    width, height = geometry.resize   # scale and convert in one swscale pass
    image = frame.to_ndarray(width=width, height=height, format="rgb24", interpolation="BILINEAR", threads=1)
    return crop_box(image, geometry.output_crop)
