"""Video decoders, one module per backend (as pytorchvideo's ``encoded_video_*``); ``base`` holds what they share.
``pyav`` (default; also the probe) reads paths, bytes or files; the others ``read_frames(path, req, geometry, threads)``.
``dali`` decodes the codecs DALI reads on this machine and hands the rest to ``pyav`` (``dali.handles``).
"""

from __future__ import annotations

from mmpt_lite.data.decoders import dali, decord, ffmpeg, pyav, torchcodec

DECODERS = {"pyav": pyav, "ffmpeg": ffmpeg, "decord": decord, "torchcodec": torchcodec, "dali": dali}


def get_decoder(name: str):
    """The decoder module called ``name``; a ValueError lists the valid names."""
    if name not in DECODERS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(DECODERS)}")
    return DECODERS[name]
