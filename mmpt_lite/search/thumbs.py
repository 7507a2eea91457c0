"""A hit's thumbnail strip: a few frames spread over its window, side by side, as one JPEG."""

from __future__ import annotations

import os

import numpy as np
import simplejpeg

from mmpt_lite.data.video import SpatialTransform, read_clip


def thumbnail_strip(path: str | os.PathLike, start: float, end: float, *, frames: int = 4, height: int = 72,
                    quality: int = 80, decoder: str = "pyav") -> bytes:
    """JPEG bytes of ``frames`` frames evenly spaced over [start, end) seconds, each ``height`` pixels high,
    concatenated left to right (frames past the end of the file are black). Raises the decoder's errors."""
    clip = read_clip(os.fspath(path), float(start), float(max(end, start + 1e-3)), num_frames=frames,
                     transform=SpatialTransform(short_side=height), backend=decoder, pad=True)
    strip = np.ascontiguousarray(np.concatenate(list(clip), axis=1))  # [H, frames * W, 3]
    return simplejpeg.encode_jpeg(strip, quality=quality, colorspace="RGB")
