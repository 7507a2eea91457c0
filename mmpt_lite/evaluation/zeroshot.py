"""Zero-shot text-to-video retrieval on MSR-VTT (JSFusion 1k-A) and YouCook2 (validation), MIL-NCE protocol.

One column per CSV row: MSR-VTT decodes the whole video (windows over 0 … duration), YouCook2 the row's
segment (windows over start … end). A video's embedding is the plain mean of its window embeddings;
scores = text · video, no normalisation. A missing or undecodable video keeps its column, scored -inf,
so its caption counts as a miss and the result stays comparable with runs that could read it.
"""

from __future__ import annotations

import functools
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mmpt_lite.evaluation.cache import FeatureCache, cache_key, files_fingerprint
from mmpt_lite.evaluation.features import (
    RetrievalProtocol,
    VideoRequest,
    WindowFeatures,
    cached_window_features,
    decode_retrieval_windows,
    embed_texts,
    extract_window_features,
)
from mmpt_lite.evaluation.metrics import ground_truth_ranks, metrics_from_ranks
from mmpt_lite.fileio import file_sha256

KINDS = ("msrvtt", "youcook")
DEFAULT_CSV = {"msrvtt": "msrvtt_test.csv", "youcook": "validation_youcook.csv"}
YOUCOOK_EXTENSIONS = (".mp4", ".mkv", ".webm")
MSRVTT_COLUMNS = ("video_id", "sentence")
YOUCOOK_COLUMNS = ("end", "start", "task", "text", "video_id")


@dataclass
class RetrievalSet:
    """Captions and the video (segment) each one matches: texts[i] <-> requests[i]."""

    kind: str
    texts: list[str]
    requests: list[VideoRequest]


def _read_csv(csv_path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    if not csv_path.is_file():
        raise FileNotFoundError(f"eval CSV not found: {csv_path}")
    table = pd.read_csv(csv_path)
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{csv_path}: missing column(s) {missing}; has {list(table.columns)}")
    if table.empty:
        raise ValueError(f"{csv_path}: no rows")
    return table


def _youcook_path(video_root: Path, task, video_id: str) -> Path:
    """``<root>/validation/<task>/<video_id>.{mp4|mkv|webm}``; the .mp4 name when none exists (reported missing)."""
    folder = video_root / "validation" / str(task)
    for extension in YOUCOOK_EXTENSIONS:
        if (folder / f"{video_id}{extension}").is_file():
            return folder / f"{video_id}{extension}"
    return folder / f"{video_id}{YOUCOOK_EXTENSIONS[0]}"


def read_retrieval_set(kind: str, csv_path: str | Path, video_root: str | Path) -> RetrievalSet:
    """MSR-VTT: ``key,vid_key,video_id,sentence`` + ``<root>/<video_id>.mp4``;
    YouCook2: ``end,start,task,text,video_id`` + ``<root>/validation/<task>/<video_id>.<ext>``."""
    csv_path, video_root = Path(csv_path), Path(video_root)
    if kind == "msrvtt":
        table = _read_csv(csv_path, MSRVTT_COLUMNS)
        requests = [VideoRequest(str(v), str(video_root / f"{v}.mp4")) for v in table["video_id"]]
        return RetrievalSet(kind, [str(s) for s in table["sentence"]], requests)
    if kind == "youcook":
        table = _read_csv(csv_path, YOUCOOK_COLUMNS)
        requests = [VideoRequest(f"{row.video_id}[{row.start:g}-{row.end:g}s]",
                                 str(_youcook_path(video_root, row.task, str(row.video_id))),
                                 float(row.start), float(row.end))
                    for row in table.itertuples(index=False)]
        return RetrievalSet(kind, [str(t) for t in table["text"]], requests)
    raise ValueError(f"unknown retrieval set {kind!r}; choose one of {KINDS}")


def retrieval_scores(text_embeddings: np.ndarray, window_embeddings: np.ndarray,
                     readable: np.ndarray) -> np.ndarray:
    """scores float64 [N texts, N videos] = text · mean-over-windows(video); unreadable columns = -inf.

    Args: text_embeddings [N, D]; window_embeddings [N, W, D]; readable bool [N].
    """
    video_embeddings = window_embeddings.astype(np.float64).mean(axis=1)
    scores = text_embeddings.astype(np.float64) @ video_embeddings.T
    scores[:, ~readable] = -np.inf
    return scores


@dataclass
class RetrievalResult:
    """metrics (see :func:`metrics_from_ranks`) plus counts; ranks int [N]; problems by video name."""

    metrics: dict
    ranks: np.ndarray
    missing: list[str] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)
    from_cache: bool = False

    def summary(self) -> dict:
        return {**self.metrics, "num_texts": len(self.ranks), "num_videos": len(self.ranks),
                "num_missing": len(self.missing), "num_unreadable": len(self.unreadable),
                "missing": self.missing, "unreadable": self.unreadable}


def video_features(model: torch.nn.Module, dataset: RetrievalSet, protocol: RetrievalProtocol, *,
                   batch_size: int, num_workers: int, device: torch.device, progress: bool = False,
                   cache: FeatureCache | None = None, checkpoint_id: str | None = None,
                   csv_path: Path | None = None) -> tuple[WindowFeatures, bool]:
    """Window embeddings [N, W, D] of every column and whether they came from ``cache``.

    The cache is used only with a ``checkpoint_id`` (a model being trained has none).
    """
    key = None
    if cache is not None and checkpoint_id is not None:
        key = cache_key({"task": dataset.kind, "checkpoint": checkpoint_id, "protocol": asdict(protocol),
                         "csv": file_sha256(csv_path) if csv_path else None,
                         "videos": files_fingerprint([Path(r.path) for r in dataset.requests]),
                         "requests": [(r.path, r.start, r.end) for r in dataset.requests]})
    decode = functools.partial(decode_retrieval_windows, protocol=protocol)
    return cached_window_features(cache, key, lambda: extract_window_features(
        model, dataset.requests, decode, output="video_embedding", batch_size=batch_size,
        num_workers=num_workers, device=device, progress=progress, desc=f"{dataset.kind} videos"))


def run_retrieval(model: torch.nn.Module, dataset: RetrievalSet, protocol: RetrievalProtocol, *,
                  batch_size: int, num_workers: int, device: torch.device, progress: bool = False,
                  cache: FeatureCache | None = None, checkpoint_id: str | None = None,
                  csv_path: Path | None = None) -> RetrievalResult:
    """Embed texts and videos with ``model`` (already on ``device``, eval mode, under no_grad) and score."""
    found, cached = video_features(model, dataset, protocol, batch_size=batch_size, num_workers=num_workers,
                                   device=device, progress=progress, cache=cache, checkpoint_id=checkpoint_id,
                                   csv_path=csv_path)
    texts = embed_texts(model, dataset.texts, device=device)
    if not found.readable.any():  # no video embedding at all: every caption is a miss
        scores = np.full((len(texts), len(texts)), -np.inf)
    else:
        scores = retrieval_scores(texts, found.features, found.readable)
    ranks = ground_truth_ranks(scores)
    missing = sorted({r.name for r in dataset.requests if not os.path.isfile(r.path)})
    unreadable = {name: message for name, message in found.errors.items() if name not in missing}
    return RetrievalResult(metrics_from_ranks(ranks), ranks, missing, unreadable, cached)


def evaluate_retrieval(model: torch.nn.Module, csv_path: str | Path, video_root: str | Path, *, kind: str,
                       num_windows: int, num_frames: int, fps: float, video_size: int, batch_size: int,
                       device: torch.device | str, num_workers: int = 0) -> dict:
    """In-training zero-shot retrieval check; returns metrics and problem counts (see RetrievalResult.summary).

    Uses the model's own normalisation, runs under torch.no_grad() in eval mode and puts the model back in
    the mode it was in. The model is expected to be on ``device`` already.
    """
    device = torch.device(device)
    dataset = read_retrieval_set(kind, csv_path, video_root)
    protocol = RetrievalProtocol(num_windows, num_frames, fps, video_size)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            result = run_retrieval(model, dataset, protocol, batch_size=batch_size, num_workers=num_workers,
                                   device=device)
    finally:
        model.train(was_training)
    return result.summary()
