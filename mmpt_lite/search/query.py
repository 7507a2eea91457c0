"""Text queries against an index: the checkpoint named in its header embeds the text, faiss ranks the windows.

Default grouping: each file once, with its best-scoring window (a long video would otherwise fill every
slot with its neighbouring, overlapping windows); ``per_file=False`` returns the raw best windows.
Scores are cosine similarities (inner products of L2-normalised vectors).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import torch

from mmpt_lite.search.model import embed_queries, load_header_model
from mmpt_lite.search.store import IndexSnapshot, SearchIndexError, read_header, read_snapshot
from mmpt_lite.search.walk import inside


@dataclass(frozen=True)
class Hit:
    """One result: its rank (1-based), cosine score, window row id, file id, file (relative), span in seconds."""

    rank: int
    score: float
    window_id: int
    file_id: int
    file: str
    start: float
    end: float

    def to_json(self) -> dict:
        return {"rank": self.rank, "score": round(self.score, 4), "window_id": self.window_id,
                "file_id": self.file_id, "file": self.file, "start": self.start, "end": self.end}


class SearchIndex:
    """An index folder and its checkpoint, loaded once and searched many times (thread-safe).

    ``refresh()`` picks up a newer generation written by ``mmpt-lite index`` (same checkpoint, which an
    update guarantees); file ids are positions in the sorted list of indexed files of the loaded generation.
    """

    def __init__(self, index_dir: str | os.PathLike, *, device: torch.device | str = "cpu"):
        self.folder = Path(index_dir)
        self.device = torch.device(device)
        self._lock = threading.Lock()
        snapshot = read_snapshot(self.folder)
        if snapshot is None:
            raise SearchIndexError(f"{self.folder}: no index here (no index.json); build one with mmpt-lite index")
        self.loaded = load_header_model(snapshot.header, self.folder)
        self.loaded.model.to(self.device).eval()
        self._use(snapshot)

    def _use(self, snapshot: IndexSnapshot) -> None:
        self.snapshot = snapshot
        self.header = snapshot.header
        self.video_root = Path(snapshot.header["video_root"])
        self.files = sorted({row.file for row in snapshot.rows})
        file_ids = {rel: i for i, rel in enumerate(self.files)}
        self.row_file_ids = np.array([file_ids[row.file] for row in snapshot.rows], np.int64)
        self.faiss = faiss.IndexFlatIP(int(snapshot.header["embed_dim"]))
        if len(snapshot.vectors):
            self.faiss.add(snapshot.vectors)

    def refresh(self) -> bool:
        """Reload the table and vectors if a newer generation was committed; whether it did."""
        try:
            header = read_header(self.folder)
            if header is None or header["generation"] == self.header["generation"]:
                return False
            if header["checkpoint"]["sha256"] != self.header["checkpoint"]["sha256"]:
                return False  # an update never does this (it refuses another checkpoint): keep what is loaded
            snapshot = read_snapshot(self.folder)
        except SearchIndexError:
            # an update committed again and removed this generation between the two reads, or the folder is
            # being replaced: keep serving the loaded generation and look again at the next search
            return False
        with self._lock:
            self._use(snapshot)
        return True

    @property
    def num_windows(self) -> int:
        return len(self.snapshot.rows)

    def embed(self, text: str) -> np.ndarray:
        """float32 [D] unit-norm embedding of ``text``."""
        with self._lock:  # one forward at a time: the tokenizer and model are shared by the server's threads
            return embed_queries(self.loaded, [text], self.device)[0]

    def search(self, text: str, k: int = 10, *, per_file: bool = True) -> list[Hit]:
        """The ``k`` best files (each with its best window) or, with ``per_file=False``, the ``k`` best windows."""
        query = self.embed(text)[None]
        with self._lock:
            snapshot, total = self.snapshot, self.faiss.ntotal
            if total == 0 or k < 1:
                return []
            depth = min(total, k if not per_file else 4 * k)
            while True:
                scores, ids = self.faiss.search(query, depth)
                scores, ids = scores[0], ids[0]
                chosen = self._pick(ids, scores, k, per_file)
                if len(chosen) >= k or depth >= total:
                    break
                depth = min(total, depth * 4)
            return [Hit(rank, float(score), int(i), int(self.row_file_ids[i]), snapshot.rows[i].file,
                        snapshot.rows[i].start, snapshot.rows[i].end)
                    for rank, (i, score) in enumerate(chosen, start=1)]

    def _pick(self, ids: np.ndarray, scores: np.ndarray, k: int, per_file: bool) -> list[tuple[int, float]]:
        chosen, seen = [], set()
        for i, score in zip(ids, scores, strict=True):
            if i < 0:
                break
            if per_file:
                file_id = self.row_file_ids[i]
                if file_id in seen:
                    continue
                seen.add(file_id)
            chosen.append((int(i), float(score)))
            if len(chosen) == k:
                break
        return chosen

    def file_path(self, file_id: int) -> Path:
        """The real path of indexed file ``file_id``, refused (LookupError) unless it resolves to a regular file
        inside the video root: the table names files relative to the root, but the folder may have changed
        (a file replaced by a symlink leading out) or the table may have been edited."""
        if not 0 <= file_id < len(self.files):
            raise LookupError(f"no indexed file {file_id}")
        root_real = Path(os.path.realpath(self.video_root))
        candidate = self.video_root / self.files[file_id]
        if not inside(root_real, candidate):
            raise LookupError(f"indexed file {file_id} resolves outside the video folder")
        real = Path(os.path.realpath(candidate))
        if not real.is_file():
            raise LookupError(f"indexed file {file_id} is gone")
        return real

    def window(self, window_id: int) -> tuple[int, float, float]:
        """(file id, start, end) of window row ``window_id``; LookupError when there is none."""
        if not 0 <= window_id < len(self.snapshot.rows):
            raise LookupError(f"no window {window_id}")
        row = self.snapshot.rows[window_id]
        return int(self.row_file_ids[window_id]), row.start, row.end
