"""Batched feature extraction for evaluation: decode workers feed windows, the model embeds them.

Decoding runs in a torch DataLoader (``num_workers`` processes, one video per item) and ships uint8
windows; conversion to float, scaling to [0, 1] and the model's own mean/std normalisation happen on
the evaluation device. A video that cannot be read becomes an error record instead of an exception,
so one broken file never ends a long evaluation and every broken file is reported by name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mmpt_lite.data.video import SpatialTransform, probe_video, read_all_frames, read_clip
from mmpt_lite.evaluation.windows import (
    cut_frame_windows,
    frame_window_starts,
    pad_or_trim,
    retrieval_window_span,
    retrieval_window_starts,
)
from mmpt_lite.models.preprocess import VideoInput
from mmpt_lite.progress import progress_bar


@dataclass(frozen=True)
class RetrievalProtocol:
    """MIL-NCE test-time sampling: ``num_windows`` windows of ``num_frames`` at ``fps``, ``video_size`` square."""

    num_windows: int = 4
    num_frames: int = 16
    fps: float = 5.0
    video_size: int = 224


@dataclass(frozen=True)
class ProbeProtocol:
    """HMDB probe sampling: the whole video, ``num_windows`` windows of ``num_frames`` contiguous frames.

    ``fps`` 0 decodes at the native rate (the published protocol). A positive ``fps`` resamples the video
    first, for models trained on clips far sparser than the native rate (the CPU demo's 8 frames at
    2.5 fps: 8 native frames would span a tenth of the time it was trained on).
    """

    num_windows: int = 4
    num_frames: int = 16
    video_size: int = 224
    fps: float = 0.0


@dataclass(frozen=True)
class VideoRequest:
    """One video (or one segment of it) to featurise; ``end=None`` means the end of the video."""

    name: str
    path: str
    start: float = 0.0
    end: float | None = None


def eval_transform(video_size: int) -> SpatialTransform:
    """MIL-NCE evaluation crop: the centred min(w, h) square, resized to video_size × video_size."""
    return SpatialTransform(short_side=video_size, crop_mode="none", square_center_crop_first=True)


def decode_retrieval_windows(request: VideoRequest, protocol: RetrievalProtocol, backend: str = "pyav") -> np.ndarray:
    """uint8 [num_windows, num_frames, S, S, 3]: each window decoded on its own at ``fps``, zero-padded.

    Raises ValueError when no window yields a single frame (e.g. a segment past the end of the file):
    such a video is unreadable for the protocol, not a black clip.
    """
    end = request.end if request.end is not None else probe_video(request.path).duration
    starts = retrieval_window_starts(request.start, end, protocol.num_windows, protocol.num_frames, protocol.fps)
    transform = eval_transform(protocol.video_size)
    windows, decoded = [], 0
    for window_start in starts:
        clip_start, clip_end = retrieval_window_span(float(window_start), protocol.num_frames, protocol.fps)
        clip = read_clip(request.path, clip_start, clip_end, num_frames=protocol.num_frames, fps=protocol.fps,
                         transform=transform, pad=False, backend=backend)
        decoded += len(clip)
        if len(clip) == 0:
            clip = np.zeros((0, protocol.video_size, protocol.video_size, 3), np.uint8)
        windows.append(pad_or_trim(clip, protocol.num_frames))
    if decoded == 0:
        raise ValueError(f"{request.path}: no frames in [{request.start:g}, {end:g}] s")
    return np.stack(windows)


def decode_probe_windows(request: VideoRequest, protocol: ProbeProtocol, backend: str = "pyav") -> np.ndarray:
    """uint8 [num_windows, num_frames, S, S, 3]: contiguous frames (native rate, or ``protocol.fps``) at
    linspace(0, T - num_frames)."""
    frames = read_all_frames(request.path, fps=protocol.fps or None, transform=eval_transform(protocol.video_size),
                             backend=backend)
    if len(frames) == 0:
        raise ValueError(f"{request.path}: no frames decoded")
    starts = frame_window_starts(len(frames), protocol.num_frames, protocol.num_windows)
    return cut_frame_windows(frames, starts, protocol.num_frames)


class WindowDataset(Dataset):
    """Item i -> (i, uint8 windows [W, T, S, S, 3] or None, error message or None)."""

    def __init__(self, requests: Sequence[VideoRequest], decode: Callable[[VideoRequest], np.ndarray]):
        self.requests, self.decode = list(requests), decode

    def __len__(self) -> int:
        return len(self.requests)

    def __getitem__(self, index: int):
        request = self.requests[index]
        try:
            return index, torch.from_numpy(self.decode(request)), None
        except Exception as exc:  # one broken file must not end a long run: it becomes that file's error
            return index, None, f"{type(exc).__name__}: {exc}"


def _collate(items):
    indices = [i for i, windows, _ in items if windows is not None]
    windows = torch.stack([w for _, w, _ in items if w is not None]) if indices else None
    errors = {i: error for i, _, error in items if error is not None}
    return indices, windows, errors


@dataclass
class WindowFeatures:
    """features float32 [N, W, D] (zeros where unreadable); readable bool [N]; errors: name -> message."""

    features: np.ndarray
    readable: np.ndarray
    errors: dict[str, str]


def probe_feature(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Pooled backbone feature for the linear probe: S3D mixed_5c, else the mean of the ViT tokens."""
    if "mixed_5c" in outputs:
        return outputs["mixed_5c"]
    return outputs["video_tokens"].mean(dim=1)


def select_output(outputs: dict[str, torch.Tensor], output: str) -> torch.Tensor:
    """The model output ``extract_window_features`` keeps: "probe" is :func:`probe_feature`; any other name is that
    entry of the model's outputs ("video_embedding" for retrieval, "logits" for classification)."""
    if output == "probe":
        return probe_feature(outputs)
    if output not in outputs:
        raise KeyError(f"the model returned {sorted(outputs)}, not {output!r}")
    return outputs[output]


def extract_window_features(model: torch.nn.Module, requests: Sequence[VideoRequest],
                            decode: Callable[[VideoRequest], np.ndarray], *, output: str, batch_size: int,
                            num_workers: int, device: torch.device, progress: bool = True,
                            desc: str = "videos") -> WindowFeatures:
    """Run ``model`` over every window of every request.

    Args:
        decode: request -> uint8 [W, T, S, S, 3] (a picklable callable, e.g. a functools.partial).
        output: "video_embedding" (retrieval), "probe" (:func:`probe_feature`) or "logits" (classification):
            see :func:`select_output`; the features are then float32 [N, W, D] of that output.
        batch_size: videos per forward pass (each contributes W windows).
    The model must already be on ``device`` and in eval mode; call under torch.no_grad().
    """
    loader = DataLoader(WindowDataset(requests, decode), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=_collate, pin_memory=device.type == "cuda",
                        persistent_workers=False)
    video_input = VideoInput(model, device)
    features: np.ndarray | None = None
    readable = np.zeros(len(requests), dtype=bool)
    errors: dict[str, str] = {}
    with progress_bar(total=len(requests), desc=desc, unit="video", disable=not progress, leave=False) as bar:
        for indices, windows, batch_errors in loader:
            for i, message in batch_errors.items():
                errors[requests[i].name] = message
            if windows is not None:
                num_videos, num_windows = windows.shape[:2]
                outputs = model(video=video_input(windows.flatten(0, 1)))
                values = select_output(outputs, output)
                values = values.float().reshape(num_videos, num_windows, -1).cpu().numpy()
                if features is None:
                    features = np.zeros((len(requests), num_windows, values.shape[-1]), np.float32)
                features[indices] = values
                readable[indices] = True
            bar.update(len(indices) + len(batch_errors))
    if features is None:  # nothing readable at all: shape still has to be known to the caller
        features = np.zeros((len(requests), 0, 0), np.float32)
    return WindowFeatures(features, readable, errors)


def embed_texts(model: torch.nn.Module, texts: Sequence[str], *, device: torch.device,
                batch_size: int = 256) -> np.ndarray:
    """float32 [N, D] text embeddings, in chunks (the model must be in eval mode, under no_grad)."""
    chunks = []
    for first in range(0, len(texts), batch_size):
        tokens = model.tokenizer(list(texts[first:first + batch_size]))
        tokens = {name: ids.to(device) for name, ids in tokens.items()}
        chunks.append(model(text=tokens)["text_embedding"].float().cpu().numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
