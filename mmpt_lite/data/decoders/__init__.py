"""Video decoders, one module per backend (the layout of pytorchvideo's ``data/encoded_video_*``).

``base`` holds what they share (clip request, selection rule, geometry, :class:`VideoDecodeError`);
``pyav`` (the default; also the metadata probe) reads paths, bytes or file objects; ``ffmpeg``,
``decord`` and ``torchcodec`` read a path with ``read_frames(path, req, geometry, threads)``.
"""

from __future__ import annotations

from types import ModuleType

from mmpt_lite.data.decoders import decord, ffmpeg, pyav, torchcodec

DECODERS: dict[str, ModuleType] = {"pyav": pyav, "ffmpeg": ffmpeg, "decord": decord, "torchcodec": torchcodec}


def get_decoder(name: str) -> ModuleType:
    """The decoder module called ``name``; a ValueError lists the valid names."""
    if name not in DECODERS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(DECODERS)}")
    return DECODERS[name]
