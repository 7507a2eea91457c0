"""Decoding backends that work on a file path: an ffmpeg subprocess per clip (MIL-NCE's loader style),
and the optional decord and torchcodec (imported only when used). PyAV, the default, lives in video.py.

Each backend takes the clip request and frame geometry planned by :mod:`mmpt_lite.data.video` and returns
the selected frames (uint8 [H, W, 3] arrays) with the same selection rule as PyAV: output frame i is the
frame shown at ``start + i / fps``.
"""

from __future__ import annotations

import re
import subprocess

import numpy as np

from mmpt_lite.data.video import (
    _TIME_EPS,
    FrameGeometry,
    VideoDecodeError,
    _apply_geometry_rgb,
    _ClipRequest,
    _crop,
)


def _read_ffmpeg(path: str, req: _ClipRequest, geometry: FrameGeometry, threads: int) -> list[np.ndarray]:
    """One ``ffmpeg`` process per clip (MIL-NCE's loader style), selecting frames with the same rule.

    ``-noaccurate_seek`` keeps the frames between the keyframe and ``start`` (with negative timestamps): the
    ``fps`` filter (``round=up``, ``start_time=0``) then picks the frame on screen at each target time, where
    plain ``-ss`` trimming would drop the frame that is on screen at ``start``. At the native rate the frame
    times are read back from ``showinfo`` and selected here.
    """
    # Shift timestamps so t=0 is `start`, in microseconds: done by `-ss` alone the shift is rounded to the
    # stream's time base (1/25 s in avi), which moves the selection by a frame.
    filters = [f"settb=AVTB,setpts=PTS-{req.start!r}/TB"]
    filters.append(f"fps=fps={req.fps!r}:round=up:start_time=0" if req.fps is not None else "showinfo")
    if geometry.source_crop is not None:
        filters.append("crop={2}:{3}:{0}:{1}".format(*geometry.source_crop))
    filters.append("scale={}:{}:flags=bilinear".format(*geometry.resize))
    if geometry.output_crop is not None:
        filters.append("crop={2}:{3}:{0}:{1}".format(*geometry.output_crop))
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error" if req.fps else "info",
           "-threads", str(threads)]
    if req.start > 0:
        cmd += ["-noaccurate_seek", "-ss", f"{req.start:.6f}"]
    cmd += ["-copyts", "-start_at_zero"]
    cmd += ["-i", path, "-an", "-sn", "-filter_threads", "1", "-vf", ",".join(filters)]
    if req.fps is None:
        cmd += ["-fps_mode", "passthrough"]
    elif req.length is not None:
        cmd += ["-frames:v", str(req.length)]
    if req.end is not None:
        cmd += ["-t", f"{req.end - req.start:.6f}"]
    cmd += ["-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    proc = subprocess.run(cmd, capture_output=True)
    stderr = proc.stderr.decode(errors="replace")
    if proc.returncode != 0:
        raise VideoDecodeError(path, f"ffmpeg failed: {stderr.strip()[-500:]}")
    h, w = geometry.out_hw
    data = np.frombuffer(proc.stdout, np.uint8)
    frames = data[: len(data) // (h * w * 3) * (h * w * 3)].reshape(-1, h, w, 3)
    if req.fps is not None:
        return list(frames)
    times = np.array([float(m) for m in re.findall(r"pts_time:\s*(-?[0-9.]+)", stderr)][: len(frames)])
    ends = np.append(times[1:], times[-1] + 1.0) if len(times) else times
    relative = _ClipRequest(0.0, None if req.end is None else req.end - req.start, req.num_frames, None)
    return [frames[i] for i in _select_indices(times, ends, relative)]


def _select_indices(starts: np.ndarray, ends: np.ndarray, req: _ClipRequest) -> list[int]:
    """Frame indices for ``req`` given per-frame presentation intervals ``[starts, ends)`` (seconds)."""
    if len(starts) == 0:
        return []
    shown = int(np.clip(np.searchsorted(starts, req.start + _TIME_EPS, side="right") - 1, 0, None))
    if req.fps is None:
        indices = range(shown, len(starts) if req.length is None else min(len(starts), shown + req.length))
        return [i for i in indices if i == shown or req.before_end(starts[i])]
    limit = req.length if req.length is not None else int((ends[-1] - req.start) * req.fps) + 1
    targets = req.start + np.arange(limit) / req.fps
    keep = targets < ends[-1] - _TIME_EPS
    if req.end is not None:
        keep &= targets < req.end - _TIME_EPS
    targets = targets[keep]   # targets increase, so this keeps a prefix
    return np.clip(np.searchsorted(starts, targets + _TIME_EPS, side="right") - 1, 0, None).tolist()


def _read_decord(path: str, req: _ClipRequest, geometry: FrameGeometry, threads: int) -> list[np.ndarray]:
    try:
        import decord
    except ImportError as err:
        raise VideoDecodeError(path, "backend 'decord' is not installed (pip install decord==0.6.0)") from err
    size = {} if geometry.source_crop is not None else {"width": geometry.resize[0], "height": geometry.resize[1]}
    try:
        reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=threads, **size)
        times = reader.get_frame_timestamp(np.arange(len(reader)))
        indices = _select_indices(times[:, 0], times[:, 1], req)
        batch = reader.get_batch(indices).asnumpy() if indices else []
    except decord.DECORDError as err:
        raise VideoDecodeError(path, f"decord failed ({err})") from err
    if size:
        return [_crop(image, geometry.output_crop) for image in batch]
    return [_apply_geometry_rgb(image, geometry) for image in batch]


def _read_torchcodec(path: str, req: _ClipRequest, geometry: FrameGeometry, threads: int) -> list[np.ndarray]:
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
            targets = np.maximum(targets[targets < stop_s - _TIME_EPS], first_s)
            batch = decoder.get_frames_played_at(seconds=targets.tolist()).data.numpy() if len(targets) else []
    except (RuntimeError, ValueError, IndexError) as err:
        raise VideoDecodeError(path, f"torchcodec failed ({err})") from err
    return [_apply_geometry_rgb(image, geometry) for image in batch]


PATH_BACKENDS = {"ffmpeg": _read_ffmpeg, "decord": _read_decord, "torchcodec": _read_torchcodec}
