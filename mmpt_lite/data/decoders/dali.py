"""The DALI decoder (optional: the gpu extra): ``fn.decoders.video`` on the file's bytes, on the GPU
(NVDEC) when CUDA is available, on the CPU otherwise. Needs a file path.

DALI decodes a codec subset: on the CPU only VP9 (checked with DALI 2.4), on the GPU what NVDEC reads. ``handles``
says whether a file is one of them; ``read_clip`` reads the others with PyAV and logs that once per codec. The frames
are chosen by timestamp like every backend's: the packets' presentation times (demuxed with PyAV, nothing decoded)
give each frame's interval, ``select_indices`` picks the frames, DALI decodes exactly those.
"""

from __future__ import annotations

import logging
import os

import av
import numpy as np

from mmpt_lite.data.decoders.base import (
    ClipRequest,
    FrameGeometry,
    VideoDecodeError,
    apply_geometry_rgb,
    select_indices,
)
from mmpt_lite.data.decoders.pyav import probe_video

log = logging.getLogger("mmpt_lite")

# The release this backend and the DALI training loader were checked with (setup.py's gpu and dev extras pin it).
DALI_REQUIREMENT = "nvidia-dali-cuda120==2.4.0"

CPU_CODECS = frozenset({"vp9"})
GPU_CODECS = frozenset({"h264", "hevc", "vp9", "av1"})   # NVDEC's, as DALI documents them
_fallback_logged: set[str] = set()
_pipelines: dict[tuple[int, bool, int], object] = {}   # (process, gpu, threads) -> built pipeline


def _use_gpu() -> bool:
    """NVDEC when CUDA is available, except in DataLoader workers: forked after the parent started CUDA, they
    cannot start it themselves, so DALI decodes on their CPU there."""
    import torch  # here, not at the top: the other backends (and the shard builder) do without torch
    import torch.utils.data

    return torch.cuda.is_available() and torch.utils.data.get_worker_info() is None


def handles(source) -> bool:
    """Whether DALI decodes ``source`` here: a file path whose codec the DALI device (GPU or CPU) reads."""
    if not isinstance(source, (str, os.PathLike)):
        return False
    try:
        import nvidia.dali  # noqa: F401
    except ImportError as err:
        raise VideoDecodeError(source, f"backend 'dali' is not installed (pip install {DALI_REQUIREMENT})") from err
    codec = probe_video(source).codec
    gpu = _use_gpu()
    if codec in (GPU_CODECS if gpu else CPU_CODECS):
        return True
    if codec not in _fallback_logged:
        _fallback_logged.add(codec)
        log.info("decoder dali: DALI does not decode %s on the %s; reading %s videos with PyAV", codec,
                 "GPU" if gpu else "CPU", codec)
    return False


def frame_intervals(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Presentation intervals of the video stream's frames in display order: (starts, ends) float64 [N], seconds
    from the container's start. Read from the packets, nothing decoded."""
    try:
        with av.open(path, metadata_errors="ignore") as container:
            stream = container.streams.video[0]
            zero = container.start_time / av.time_base if container.start_time is not None else 0.0
            packets = [(p.pts, p.duration) for p in container.demux(stream) if p.pts is not None and p.size]
            rate = stream.average_rate or stream.guessed_rate
            interval = 1.0 / float(rate) if rate else 1.0 / 25
            tb = float(stream.time_base)
    except (av.FFmpegError, IndexError, OSError) as err:
        raise VideoDecodeError(path, f"cannot read the packet timestamps ({err})") from err
    packets.sort()
    starts = np.array([pts * tb - zero for pts, _ in packets], np.float64)
    last = (packets[-1][1] * tb if packets and packets[-1][1] else interval)
    ends = np.append(starts[1:], starts[-1] + last) if len(starts) else starts
    return starts, ends


def _pipeline(gpu: bool, threads: int):
    key = (os.getpid(), gpu, threads)
    if key not in _pipelines:
        import torch
        from nvidia.dali import fn, pipeline_def, types

        device_id = torch.cuda.current_device() if gpu else None

        @pipeline_def(batch_size=1, num_threads=max(1, threads), device_id=device_id, prefetch_queue_depth=1,
                      exec_async=False, exec_pipelined=False)
        def video_pipeline():
            encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
            frames = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
            return fn.decoders.video(encoded, device="mixed" if gpu else "cpu", frames=frames)

        pipe = video_pipeline()
        pipe.build()
        _pipelines[key] = pipe
    return _pipelines[key]


def read_frames(path: str, req: ClipRequest, geometry: FrameGeometry, threads: int) -> list[np.ndarray]:
    """The frames ``req`` selects, each uint8 [h, w, 3] after ``geometry``."""
    indices = select_indices(*frame_intervals(path), req)
    if not indices:
        return []
    gpu = _use_gpu()
    pipe = _pipeline(gpu, threads)
    with open(path, "rb") as f:
        encoded = np.frombuffer(f.read(), np.uint8)
    try:
        pipe.feed_input("encoded", [encoded])
        pipe.feed_input("frames", [np.array(indices, np.int32)])
        (frames,) = pipe.run()
    except RuntimeError as err:
        raise VideoDecodeError(path, f"DALI failed ({str(err).splitlines()[0] if str(err) else err})") from err
    batch = np.array((frames.as_cpu() if gpu else frames)[0])   # [N, H, W, 3]
    if len(batch) != len(indices):
        raise VideoDecodeError(path, f"DALI returned {len(batch)} frames for {len(indices)} requested")
    return [apply_geometry_rgb(image, geometry) for image in batch]
