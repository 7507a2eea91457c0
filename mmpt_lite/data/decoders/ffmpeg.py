"""The ffmpeg decoder: one ``ffmpeg`` subprocess per clip (MIL-NCE's loader style), same selection rule as PyAV
through the ``fps`` filter. Needs a file path.
"""

from __future__ import annotations

import re
import subprocess

import numpy as np

from mmpt_lite.data.decoders.base import ClipRequest, FrameGeometry, VideoDecodeError, select_indices


def read_frames(path: str, req: ClipRequest, geometry: FrameGeometry, threads: int) -> list[np.ndarray]:
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
    # The ffmpeg CLI turns frames by a rotation tag (display matrix) while PyAV returns the coded pixels: the
    # turned frames would be squeezed into the probed (unturned) geometry, and the backends would disagree.
    cmd += ["-copyts", "-start_at_zero", "-noautorotate"]
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
    relative = ClipRequest(0.0, None if req.end is None else req.end - req.start, req.num_frames, None)
    return [frames[i] for i in select_indices(times, ends, relative)]
