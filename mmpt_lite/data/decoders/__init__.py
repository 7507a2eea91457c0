"""Video decoders, one module per backend (as pytorchvideo's ``encoded_video_*``); ``base`` holds what they share.
``pyav`` (default; also the probe) reads paths, bytes or files; the others ``read_frames(path, req, geometry, threads)``.
"""

from __future__ import annotations

from mmpt_lite.data.decoders import decord, ffmpeg, pyav, torchcodec

DECODERS = {"pyav": pyav, "ffmpeg": ffmpeg, "decord": decord, "torchcodec": torchcodec}


def get_decoder(name: str):
    """The decoder module called ``name``; a ValueError lists the valid names."""
    if name not in DECODERS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(DECODERS)}")
    return DECODERS[name]
