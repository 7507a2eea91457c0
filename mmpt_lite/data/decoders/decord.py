"""The decord decoder (optional: used only when importable). Needs a file path."""

from __future__ import annotations

import numpy as np

from mmpt_lite.data.decoders.base import (
    ClipRequest,
    FrameGeometry,
    VideoDecodeError,
    apply_geometry_rgb,
    crop_box,
    select_indices,
)


def read_frames(path: str, req: ClipRequest, geometry: FrameGeometry, threads: int) -> list[np.ndarray]:
    try:
        import decord
    except ImportError as err:
        raise VideoDecodeError(path, "backend 'decord' is not installed (pip install decord==0.6.0)") from err
    size = {} if geometry.source_crop is not None else {"width": geometry.resize[0], "height": geometry.resize[1]}
    try:
        reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=threads, **size)
        times = reader.get_frame_timestamp(np.arange(len(reader)))
        indices = select_indices(times[:, 0], times[:, 1], req)
        batch = reader.get_batch(indices).asnumpy() if indices else []
    except decord.DECORDError as err:
        raise VideoDecodeError(path, f"decord failed ({err})") from err
    if size:
        return [crop_box(image, geometry.output_crop) for image in batch]
    return [apply_geometry_rgb(image, geometry) for image in batch]
