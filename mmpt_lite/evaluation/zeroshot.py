"""Zero-shot text-to-video retrieval on MSR-VTT (JSFusion 1k-A) and YouCook2 (validation), MIL-NCE protocol.

One column per CSV row: MSR-VTT decodes the whole video (windows over 0 … duration), YouCook2 the row's
segment (windows over start … end). A video's embedding is the plain mean of its window embeddings;
scores = text · video, no normalisation. A missing or undecodable video keeps its column, scored -inf,
so its caption counts as a miss and the result stays comparable with runs that could read it.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mmpt_lite.data.classify_sets import relative_video_path
from mmpt_lite.data.video import resolve_video_path
from mmpt_lite.evaluation.cache import files_fingerprint
from mmpt_lite.evaluation.features import RetrievalProtocol, VideoRequest, decode_retrieval_windows, embed_texts
from mmpt_lite.evaluation.metrics import ground_truth_ranks, metrics_from_ranks, recall_curve
from mmpt_lite.evaluation.runtime import EvalRuntime, Evaluator, in_eval_mode
from mmpt_lite.fileio import file_sha256

YOUCOOK_EXTENSIONS = (".mp4", ".mkv", ".webm")
RETRIEVAL_COLUMNS = ["R@1", "R@5", "R@10", "MedR", "MeanR"]


@dataclass
class RetrievalSet:
    """Captions and the video (segment) each one matches: texts[i] <-> requests[i]; ``duplicates``: one
    ``file:line: ...`` message per repeated list row left out (the first is kept)."""

    texts: list[str]
    requests: list[VideoRequest]
    duplicates: list[str] = field(default_factory=list)


def _read_csv(csv_path: Path, columns: tuple[str, ...]) -> tuple[pd.DataFrame, list[str]]:
    """The list as strings (ids keep leading zeros, empty cells stay empty) and where each row is (``file:line``,
    for messages); ValueError names the file."""
    if not csv_path.is_file():
        raise FileNotFoundError(f"eval CSV not found: {csv_path}")
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except ValueError as err:   # unparseable rows, bytes that are not UTF-8, an empty file
        raise ValueError(f"{csv_path}: cannot read the list ({' '.join(str(err).split())})") from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{csv_path}: missing column(s) {missing}; has {list(table.columns)}")
    if table.empty:
        raise ValueError(f"{csv_path}: no rows")
    lines = _row_lines(csv_path)
    if len(lines) != len(table):   # the two parsers disagree on the rows: number them instead
        lines = [f"row {i + 1}" for i in range(len(table))]
    return table, [f"{csv_path}:{line}" for line in lines]


def _row_lines(csv_path: Path) -> list[int]:
    """The line each data row of a CSV ends on (pandas keeps no line numbers; a quoted text may span lines)."""
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, csv_path.stat().st_size + 1))   # any field fits: only positions are read
    try:
        with open(csv_path, newline="", encoding="utf-8", errors="replace") as f:
            reader = csv.reader(f)
            next(reader, None)
            return [reader.line_num for row in reader if row]
    finally:
        csv.field_size_limit(limit)


def _youcook_path(video_root: Path, task: str, video_id: str, where: str) -> Path:
    """``<root>/validation/<task>/<video_id>.{mp4|mkv|webm}``, else the one file of that name with another video
    extension (``resolve_video_path``), else the .mp4 name (reported missing). ValueError naming ``where`` when task
    or id lead out of the root."""
    folder = (video_root / relative_video_path(f"validation/{task}/{video_id}", video_root, where)).parent
    for extension in YOUCOOK_EXTENSIONS:
        if (folder / f"{video_id}{extension}").is_file():
            return folder / f"{video_id}{extension}"
    return Path(resolve_video_path(folder / f"{video_id}{YOUCOOK_EXTENSIONS[0]}"))


def _segment_times(row, where: str) -> tuple[float, float]:
    """(start, end) seconds of a YouCook2 row; ValueError naming ``where`` unless 0 <= start < end, both finite."""
    try:
        start, end = float(row.start), float(row.end)
    except ValueError:
        raise ValueError(f"{where}: non-numeric segment time (start={row.start!r}, end={row.end!r})") from None
    if not (math.isfinite(start) and math.isfinite(end) and 0 <= start < end):
        raise ValueError(f"{where}: segment [{row.start}, {row.end}] s is not a time span (need 0 <= start < end)")
    return start, end


def read_youcook_list(csv_path: Path, video_root: Path) -> RetrievalSet:
    """YouCook2 validation rows ``end,start,task,text,video_id``, in file order: one caption and one segment
    request (named ``<video_id>[<start>-<end>s]``) per row; also read by ``paragraph.YoucookParagraph``.

    A row repeating an earlier row's segment is left out and named in ``duplicates``; a time that is not a span
    (non-numeric, NaN, negative, end <= start) or a path out of the root is a ValueError naming ``file:line``."""
    table, where = _read_csv(csv_path, ("end", "start", "task", "text", "video_id"))
    texts, requests, duplicates, first = [], [], [], {}
    for i, row in enumerate(table.itertuples(index=False)):
        start, end = _segment_times(row, where[i])
        name = f"{row.video_id}[{start:g}-{end:g}s]"
        if name in first:
            duplicates.append(f"{where[i]}: segment {name} repeats {first[name]} (kept the first)")
            continue
        first[name] = where[i]
        texts.append(row.text)
        requests.append(VideoRequest(name, str(_youcook_path(video_root, row.task, row.video_id, where[i])), start, end))
    return RetrievalSet(texts, requests, duplicates)


def segment_cache_parts(list_path: Path, requests: list[VideoRequest]) -> dict:
    """What keys cached window features besides task, checkpoint and protocol: the list, the files, the segments."""
    return {"csv": file_sha256(list_path), "videos": files_fingerprint([Path(r.path) for r in requests]),
            "requests": [(r.path, r.start, r.end) for r in requests]}


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
    duplicates: list[str] = field(default_factory=list)   # repeated list rows left out (RetrievalSet.duplicates)

    def summary(self) -> dict:
        return {**self.metrics, "num_texts": len(self.ranks), "num_videos": len(self.ranks),
                "num_missing": len(self.missing), "num_unreadable": len(self.unreadable),
                "missing": self.missing, "unreadable": self.unreadable, "num_duplicates": len(self.duplicates),
                "duplicates": self.duplicates}


class RetrievalEvaluator(Evaluator):
    """Zero-shot text-to-video retrieval: one caption per list row, scored against every row's video."""

    ylabel = "recall@K"
    consequence = "scored as misses"
    protocol_type = RetrievalProtocol
    decode_windows = staticmethod(decode_retrieval_windows)
    feature_output = "video_embedding"

    def cache_parts(self, requests: list[VideoRequest]) -> dict:
        return segment_cache_parts(self.list_path, requests)

    @in_eval_mode
    def result(self, model: torch.nn.Module, runtime: EvalRuntime,
               checkpoint_id: str | None = None) -> RetrievalResult:
        """Embed texts and videos with ``model`` (on ``runtime.device``) and score; the feature cache is used
        only with a ``checkpoint_id`` (a model being trained has none)."""
        dataset = self.dataset
        found, cached = self.window_features(model, runtime, dataset.requests, checkpoint_id)
        texts = embed_texts(model, dataset.texts, device=runtime.device)
        if not found.readable.any():  # no video embedding at all: every caption is a miss
            scores = np.full((len(texts), len(texts)), -np.inf)
        else:
            scores = retrieval_scores(texts, found.features, found.readable)
        ranks = ground_truth_ranks(scores)
        missing = sorted({r.name for r in dataset.requests if not os.path.isfile(r.path)})
        unreadable = {name: message for name, message in found.errors.items() if name not in missing}
        return RetrievalResult(metrics_from_ranks(ranks), ranks, missing, unreadable, cached, dataset.duplicates)

    def run(self, model: torch.nn.Module, runtime: EvalRuntime) -> dict:
        """Metrics and problem counts (:meth:`RetrievalResult.summary`)."""
        return self.result(model, runtime).summary()

    def evaluate(self, model: torch.nn.Module, runtime: EvalRuntime, checkpoint_id: str | None = None):
        result = self.result(model, runtime, checkpoint_id)
        ks, recall = recall_curve(result.ranks)
        record = {"metrics": result.metrics,
                  **{k: v for k, v in result.summary().items() if k not in result.metrics},
                  "from_cache": result.from_cache, "recall_at_k": {"k": ks, "recall": recall}}
        return record, result.metrics, {"": (ks, recall)}

    def columns(self) -> list[str]:
        return RETRIEVAL_COLUMNS

    def heading(self, records: dict[str, dict]) -> str:
        first = next(iter(records.values()))
        return f"{self.title}: {first['num_texts']} captions, chance R@1 = {100 / first['num_videos']:.2f}%"


class MsrvttRetrieval(RetrievalEvaluator):
    """MSR-VTT 1k-A: ``key,vid_key,video_id,sentence`` rows, videos ``<root>/<video_id>.mp4``, whole video."""

    name = "msrvtt"
    title = "MSR-VTT 1k-A zero-shot text->video retrieval"
    synthetic_folder = "msrvtt"
    default_list = "msrvtt_test.csv"

    def read(self) -> RetrievalSet:
        """One caption per row; a row repeating an earlier row's video is left out and named; a video id leading
        out of the root is a ValueError naming ``file:line``. ``<id>.mp4`` stored as another container is found
        (``resolve_video_path``)."""
        table, where = _read_csv(self.list_path, ("video_id", "sentence"))
        texts, requests, duplicates, first = [], [], [], {}
        for i, (video_id, sentence) in enumerate(zip(table["video_id"], table["sentence"], strict=True)):
            path = self.video_root / relative_video_path(f"{video_id}.mp4", self.video_root, where[i])
            if video_id in first:
                duplicates.append(f"{where[i]}: video {video_id} repeats {first[video_id]} (kept the first)")
                continue
            first[video_id] = where[i]
            texts.append(sentence)
            requests.append(VideoRequest(video_id, resolve_video_path(path)))
        return RetrievalSet(texts, requests, duplicates)


class YoucookRetrieval(RetrievalEvaluator):
    """YouCook2 validation: ``end,start,task,text,video_id`` rows, videos
    ``<root>/validation/<task>/<video_id>.<ext>``, the row's segment."""

    name = "youcook"
    title = "YouCook2 validation zero-shot text->video retrieval"
    synthetic_folder = "youcook2"
    default_list = "validation_youcook.csv"

    def read(self) -> RetrievalSet:
        return read_youcook_list(self.list_path, self.video_root)
