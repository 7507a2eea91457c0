"""Frame-accurate video decoding: probe a file, read a clip at a fixed sampling rate, or every frame.

The time convention and selection rule are in :mod:`mmpt_lite.data.decoders.base`; missing targets are
zero frames when ``pad=True`` and dropped otherwise. Backends (``backend=``, one module each under
:mod:`mmpt_lite.data.decoders`): ``"pyav"`` (default: seek to the keyframe before ``start``, decode forward,
select by pts), ``"ffmpeg"`` (one ``ffmpeg`` subprocess per clip, the MIL-NCE loader's style, same selection
rule through the ``fps`` filter), and the optional ``"decord"`` / ``"torchcodec"`` (used only when importable) and
``"dali"`` (the codecs DALI decodes on this machine; PyAV reads the others).

Arrays are uint8 RGB, ``[T, H, W, 3]``: the coded pixels (a rotation tag in the container is not applied).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from mmpt_lite.data.decoders import get_decoder
from mmpt_lite.data.decoders.base import (
    ClipRequest,
    Source,
    SpatialTransform,
    VideoDecodeError,
    check_path,
    plan_geometry,
    resize_rgb,
)
from mmpt_lite.data.decoders.pyav import iter_clip_frames, probe_video

__all__ = ["SpatialTransform", "VideoDecodeError", "iter_clip_frames", "probe_video", "read_all_frames", "read_clip",
           "resize_rgb", "resolve_video_path"]

# Containers a listed video may turn out to be stored as (a download tool picks mp4 or webm per video).
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v")


def resolve_video_path(path: str | os.PathLike) -> str:
    """``path`` when it exists; else the one file beside it with the same name and another video extension
    (a list naming ``v.mp4`` for a folder holding ``v.webm``); else ``path`` unchanged (reported missing where read).
    Two or more candidates are ambiguous: ``path`` is returned and stays missing."""
    path = os.fspath(path)
    if os.path.exists(path):
        return path
    stem = os.path.splitext(path)[0]
    found = [stem + ext for ext in VIDEO_EXTENSIONS if os.path.isfile(stem + ext)]
    return found[0] if len(found) == 1 else path


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
    req = ClipRequest(float(start), end, num_frames, fps)
    decoder = get_decoder(backend)
    if backend == "dali" and not decoder.handles(source):   # a codec DALI cannot decode here (logged once)
        backend, decoder = "pyav", get_decoder("pyav")
    if backend == "pyav":
        frames = list(iter_clip_frames(source, start, end, num_frames=num_frames, fps=fps,
                                       transform=transform, rng=rng, threads=threads))
        out_hw = frames[0].shape[:2] if frames else None
    else:
        if not isinstance(source, (str, os.PathLike)):
            raise ValueError(f"backend {backend!r} needs a file path, got {type(source).__name__}")
        path = check_path(source)
        info = probe_video(path)
        geometry = plan_geometry(path, transform, info.width, info.height, rng)
        if backend == "torchcodec" and info.start_time:   # torchcodec takes the file's own timestamps
            req = dataclasses.replace(req, start=req.start + info.start_time,
                                      end=None if end is None else end + info.start_time)
        frames = decoder.read_frames(path, req, geometry, threads)
        out_hw = geometry.out_hw
    if out_hw is None:   # nothing decoded: the size still follows from the source and the transform
        info = probe_video(source)
        out_hw = plan_geometry(info.path, transform, info.width, info.height, np.random.default_rng(0)).out_hw
    total = req.length if (pad and req.length is not None) else len(frames)
    clip = np.zeros((total, *out_hw, 3), np.uint8)
    for i, frame in enumerate(frames[:total]):
        clip[i] = frame
    return clip


def read_all_frames(path, fps: float | None = None, transform: SpatialTransform | None = None, *,
                    backend: str = "pyav", threads: int = 1) -> np.ndarray:
    """Every frame of a video (native rate when ``fps`` is None), uint8 ``[T, H, W, 3]`` (HMDB protocol)."""
    return read_clip(path, 0.0, None, fps=fps, transform=transform, backend=backend, pad=False, threads=threads)
