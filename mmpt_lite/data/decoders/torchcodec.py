"""The torchcodec decoder (optional: used only when importable). Needs a file path; takes the file's own
timestamps (``read_clip`` shifts the request by the container's start time).
"""

from __future__ import annotations

import numpy as np

from mmpt_lite.data.decoders.base import TIME_EPS, ClipRequest, FrameGeometry, VideoDecodeError, apply_geometry_rgb


def read_frames(path: str, req: ClipRequest, geometry: FrameGeometry, threads: int) -> list[np.ndarray]:
    try:
        from torchcodec.decoders import VideoDecoder
    except ImportError as err:
        raise VideoDecodeError(path, "backend 'torchcodec' is not installed (pip install torchcodec==0.13.0)") from err
    try:
        decoder = VideoDecoder(path, seek_mode="exact", num_ffmpeg_threads=threads, dimension_order="NHWC")
        first_s, stop_s = decoder.metadata.begin_stream_seconds, decoder.metadata.end_stream_seconds
        if req.end is not None:
            stop_s = min(stop_s, req.end)
        shown_at = min(max(req.start, first_s), stop_s)
        if req.fps is None:   # "played in range" = the frame on screen at shown_at and every later one
            batch = decoder.get_frames_played_in_range(shown_at, stop_s).data.numpy()[: req.length]
        else:
            limit = req.length if req.length is not None else int((stop_s - req.start) * req.fps) + 1
            targets = req.start + np.arange(limit) / req.fps
            targets = np.maximum(targets[targets < stop_s - TIME_EPS], first_s)
            batch = decoder.get_frames_played_at(seconds=targets.tolist()).data.numpy() if len(targets) else []
    except (RuntimeError, ValueError, IndexError) as err:
        raise VideoDecodeError(path, f"torchcodec failed ({err})") from err
    return [apply_geometry_rgb(image, geometry) for image in batch]
