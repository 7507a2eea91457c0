"""The index folder on disk, written so that a kill at any moment leaves the last commit readable.

Layout::

    INDEX/index.json              header: format, video root, checkpoint (path + sha256), window protocol,
                                  embedding size, the current generation and its files, counts
    INDEX/gen-000007/vectors.faiss  faiss IndexFlatIP of L2-normalised window embeddings, row i = window i
    INDEX/gen-000007/windows.csv    sidecar table, row i = window i: id, file (relative to the video root),
                                  start, end (seconds), size, mtime_ns, checkpoint_sha256
    INDEX/gen-000007/skipped.csv    files left out: file, size, mtime_ns, reason

A commit writes a whole new generation folder under a temporary name, renames it into place, then
atomically replaces ``index.json`` to name it; older generations are removed afterwards. Readers follow
``index.json``, so they see one complete generation or the next, never a mix of the two files.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from mmpt_lite.fileio import atomic_write_text, fsync_path
from mmpt_lite.search.walk import SkippedFile

HEADER_NAME = "index.json"
FORMAT = "mmpt_lite_search_index"
VERSION = 1
TABLE_COLUMNS = ("id", "file", "start", "end", "size", "mtime_ns", "checkpoint_sha256")
SKIPPED_COLUMNS = ("file", "size", "mtime_ns", "reason")
_GENERATION = re.compile(r"^gen-(\d{6,})$")


class SearchIndexError(ValueError):
    """An index folder that cannot be used as asked; the message is one line naming the file."""


@dataclass(frozen=True)
class WindowRow:
    """One window of the sidecar table: the file (relative to the video root), its span, the file version."""

    file: str
    start: float
    end: float
    size: int
    mtime_ns: int


@dataclass
class IndexSnapshot:
    """One committed generation: header dict, rows [N], vectors float32 [N, D], the skipped files."""

    folder: Path
    header: dict
    rows: list[WindowRow]
    vectors: np.ndarray
    skipped: list[SkippedFile]

    @property
    def generation(self) -> int:
        return int(self.header["generation"])

    def path_of(self, what: str) -> Path:
        return self.folder / self.header["files"][what]


def header_path(folder: str | os.PathLike) -> Path:
    return Path(folder) / HEADER_NAME


def read_header(folder: str | os.PathLike) -> dict | None:
    """The header of the index in ``folder``; None when there is none yet."""
    path = header_path(folder)
    if not path.exists():
        return None
    try:
        header = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SearchIndexError(f"{path}: not a readable index header ({exc})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise SearchIndexError(f"{path}: not an mmpt_lite search index header (format {FORMAT!r} expected)")
    if header.get("version") != VERSION:
        raise SearchIndexError(f"{path}: index version {header.get('version')!r}; this mmpt_lite reads version "
                               f"{VERSION}: rebuild it with mmpt-lite index")
    return header


def _read_table(path: Path, sha256: str) -> list[WindowRow]:
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        if tuple(next(reader, ())) != TABLE_COLUMNS:
            raise SearchIndexError(f"{path}: header is not {','.join(TABLE_COLUMNS)}")
        for line, record in enumerate(reader, start=2):
            try:
                if len(record) != len(TABLE_COLUMNS) or int(record[0]) != len(rows):
                    raise ValueError("wrong column count or id out of order")
                if record[6] != sha256:
                    raise ValueError(f"checkpoint {record[6][:12]}... is not the header's {sha256[:12]}...")
                rows.append(WindowRow(record[1], float(record[2]), float(record[3]), int(record[4]), int(record[5])))
            except ValueError as exc:
                raise SearchIndexError(f"{path}:{line}: bad row ({exc})") from None
    return rows


def _read_skipped(path: Path) -> list[SkippedFile]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        if tuple(next(reader, ())) != SKIPPED_COLUMNS:
            raise SearchIndexError(f"{path}: header is not {','.join(SKIPPED_COLUMNS)}")
        try:
            return [SkippedFile(r[0], int(r[1]), int(r[2]), r[3]) for r in reader]
        except (ValueError, IndexError) as exc:
            raise SearchIndexError(f"{path}:{reader.line_num}: bad row ({exc})") from None


def read_snapshot(folder: str | os.PathLike) -> IndexSnapshot | None:
    """The current generation of the index in ``folder`` (None when the folder holds no index yet)."""
    folder = Path(folder)
    header = read_header(folder)
    if header is None:
        return None
    try:
        files = header["files"]
        sha256 = header["checkpoint"]["sha256"]
        vectors_path, table_path = folder / files["vectors"], folder / files["table"]
        index = faiss.read_index(str(vectors_path))
        rows = _read_table(table_path, sha256)
        skipped = _read_skipped(folder / files["skipped"])
    except KeyError as exc:
        raise SearchIndexError(f"{header_path(folder)}: header without {exc}") from None
    except (OSError, RuntimeError) as exc:  # faiss raises RuntimeError for a missing or damaged file
        raise SearchIndexError(f"{folder}: generation {header.get('generation')} is unreadable "
                               f"({str(exc).splitlines()[0][:200]})") from None
    if index.ntotal != len(rows):
        raise SearchIndexError(f"{vectors_path}: {index.ntotal} vectors but {len(rows)} rows in {table_path}")
    if index.ntotal and index.d != header.get("embed_dim"):
        raise SearchIndexError(f"{vectors_path}: {index.d}-d vectors, header says {header.get('embed_dim')}")
    vectors = index.reconstruct_n(0, index.ntotal) if index.ntotal else np.zeros((0, index.d), np.float32)
    return IndexSnapshot(folder, header, rows, np.asarray(vectors, np.float32), skipped)


def _fsynced_csv(path: Path, columns: tuple[str, ...], records) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(records)
        f.flush()
        os.fsync(f.fileno())


def commit(folder: str | os.PathLike, header: dict, rows: list[WindowRow], vectors: np.ndarray,
           skipped: list[SkippedFile]) -> dict:
    """Write ``rows`` / ``vectors`` (float32 [N, D]) / ``skipped`` as the next generation and point the header
    at it; returns the header as written. ``header`` holds the caller's fields (root, checkpoint, protocol)."""
    folder = Path(folder)
    if len(rows) != len(vectors):
        raise ValueError(f"{len(rows)} rows but {len(vectors)} vectors")
    previous = read_header(folder)
    generation = (previous["generation"] if previous else 0) + 1
    name = f"gen-{generation:06d}"
    tmp = folder / f".{name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    index = faiss.IndexFlatIP(int(header["embed_dim"]))
    if len(vectors):
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    faiss.write_index(index, str(tmp / "vectors.faiss"))
    fsync_path(tmp / "vectors.faiss")
    sha256 = header["checkpoint"]["sha256"]
    _fsynced_csv(tmp / "windows.csv", TABLE_COLUMNS,
                 ([i, r.file, f"{r.start:.6f}", f"{r.end:.6f}", r.size, r.mtime_ns, sha256] for i, r in enumerate(rows)))
    _fsynced_csv(tmp / "skipped.csv", SKIPPED_COLUMNS, ([s.rel, s.size, s.mtime_ns, s.reason] for s in skipped))
    shutil.rmtree(folder / name, ignore_errors=True)  # a generation a killed run renamed but never named
    os.replace(tmp, folder / name)
    fsync_path(folder)
    written = {"format": FORMAT, "version": VERSION, **header, "generation": generation,
               "files": {"vectors": f"{name}/vectors.faiss", "table": f"{name}/windows.csv",
                         "skipped": f"{name}/skipped.csv"},
               "counts": {"files": len({r.file for r in rows}), "windows": len(rows), "skipped": len(skipped)},
               "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write_text(header_path(folder), json.dumps(written, indent=2) + "\n", fsync=True)
    remove_stale(folder, keep=name)
    return written


def remove_stale(folder: Path, keep: str | None) -> list[str]:
    """Delete generation folders other than ``keep`` and temporaries left by killed runs; their names."""
    removed = []
    for entry in folder.iterdir():
        stale = (_GENERATION.match(entry.name) and entry.name != keep) or \
            (entry.name.startswith((".gen-", f".{HEADER_NAME}.tmp")))
        if stale:
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry.name)
    return removed


@contextlib.contextmanager
def update_lock(folder: Path):
    """Hold ``folder/.lock`` for the duration of an update: a second concurrent update is refused.

    A POSIX record lock (``lockf``), not ``flock``: decode workers forked during the update would inherit an
    flock and, orphaned by a killed run, keep holding it; record locks belong to the process alone and go
    with it."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a+") as lock:
        try:
            fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise SearchIndexError(f"{folder}: another mmpt-lite index run is updating this index") from None
        try:
            yield
        finally:
            fcntl.lockf(lock, fcntl.LOCK_UN)
