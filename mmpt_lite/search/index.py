"""Building and incrementally updating a search index over a video folder.

An update walks the folder, keeps every indexed file whose size and mtime are unchanged, drops deleted
or changed ones, and embeds the rest (new, changed, and never-seen files) with the checkpoint's video
tower through the evaluator's window decoding and feature extraction. It commits every ``commit_every``
files, so a killed run loses at most that many files' work: the next run finds them committed and embeds
only the remainder. Rows are kept sorted by (file, start), so an index built in several runs has the same
table as one built at once. Unreadable files (probe or any window failing) are left out, named and
counted; one that failed is tried again only once its size or mtime changes.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mmpt_lite.data.video import probe_video
from mmpt_lite.evaluation.checkpoints import LoadedModel
from mmpt_lite.evaluation.features import decode_retrieval_windows, extract_window_features
from mmpt_lite.progress import progress_bar
from mmpt_lite.search.model import embed_queries, normalise_rows
from mmpt_lite.search.spans import WindowProtocol, window_request, window_spans
from mmpt_lite.search.store import (
    IndexSnapshot,
    SearchIndexError,
    WindowRow,
    commit,
    read_snapshot,
    remove_stale,
    update_lock,
)
from mmpt_lite.search.walk import SkippedFile, VideoFile, walk_videos

METRIC = "inner product of L2-normalised vectors (cosine)"


@dataclass
class IndexRun:
    """How an update runs: windows per forward pass, decode worker processes, files per commit, device, bar."""

    batch_size: int = 64
    num_workers: int = 1
    commit_every: int = 16
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    progress: bool = True


@dataclass
class IndexedFile:
    """One file's part of the index: its version, spans float64 [W, 2], vectors float32 [W, D]."""

    file: VideoFile
    spans: np.ndarray
    vectors: np.ndarray


@dataclass
class UpdateReport:
    """What an update did. ``skipped``: every file left out of the index now (carried over ones included)."""

    header: dict
    embedded: list[str] = field(default_factory=list)
    reused: int = 0
    removed: list[str] = field(default_factory=list)   # deleted since the last commit
    changed: list[str] = field(default_factory=list)   # size or mtime differ: re-embedded
    skipped: list[SkippedFile] = field(default_factory=list)
    windows_embedded: int = 0
    commits: int = 0
    seconds: float = 0.0


def compatibility_problem(header: dict, video_root: Path, checkpoint: dict, protocol: WindowProtocol) -> str | None:
    """Why an existing index cannot be updated with this root / checkpoint / protocol (None: it can)."""
    old = header["checkpoint"]
    if old["sha256"] != checkpoint["sha256"]:
        return (f"built with checkpoint {old['load_path']} (sha256 {old['sha256'][:16]}...), not "
                f"{checkpoint['load_path']} (sha256 {checkpoint['sha256'][:16]}...): use another --out or delete it")
    if header["video_root"] != str(video_root):
        return f"indexes {header['video_root']}, not {video_root}: use another --out"
    old_protocol = WindowProtocol.from_json(header["protocol"])
    if old_protocol != protocol:
        differ = [f"{k} {getattr(old_protocol, k)} (asked {getattr(protocol, k)})"
                  for k in ("num_frames", "fps", "video_size", "stride_seconds", "decoder")
                  if getattr(old_protocol, k) != getattr(protocol, k)]
        return f"built with other windows: {', '.join(differ)}: use another --out"
    return None


def _indexed_files(snapshot: IndexSnapshot | None) -> dict[str, IndexedFile]:
    """The snapshot's rows grouped by file (rows of a file are contiguous and in time order)."""
    if snapshot is None:
        return {}
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(snapshot.rows):
        groups.setdefault(row.file, []).append(i)
    files = {}
    for rel, ids in groups.items():
        first = snapshot.rows[ids[0]]
        spans = np.array([(snapshot.rows[i].start, snapshot.rows[i].end) for i in ids], np.float64)
        files[rel] = IndexedFile(VideoFile(rel, first.size, first.mtime_ns), spans, snapshot.vectors[ids])
    return files


def _reason(message: str, path: str) -> str:
    """One short line: the decoder's message without the absolute path the table already names."""
    return " ".join(str(message).replace(f"{path}: ", "").split())[:300]


def embed_files(model: torch.nn.Module, root: Path, files: list[VideoFile], protocol: WindowProtocol,
                run: IndexRun) -> tuple[dict[str, IndexedFile], dict[str, SkippedFile]]:
    """Probe each file, cut its windows and embed them all (one request per window); a file is left out
    when it cannot be probed, any of its windows fails, or an embedding is not finite."""
    requests, owners, spans, failed = [], [], {}, {}
    for file in files:
        path = str(root / file.rel)
        try:
            duration = probe_video(path).duration
        except Exception as exc:  # PyAV raises many types for foreign files; each becomes that file's reason
            failed[file.rel] = SkippedFile(file.rel, file.size, file.mtime_ns, _reason(f"{type(exc).__name__}: {exc}", path))
            continue
        spans[file.rel] = window_spans(duration, protocol)
        for j, (start, _) in enumerate(spans[file.rel]):
            requests.append(window_request(f"{file.rel}#{j}", path, start, protocol))
            owners.append(file.rel)
    embedded: dict[str, IndexedFile] = {}
    if requests:
        decode = functools.partial(decode_retrieval_windows, protocol=protocol.retrieval_protocol(),
                                   backend=protocol.decoder)
        with torch.no_grad():
            found = extract_window_features(model, requests, decode, output="video_embedding",
                                            batch_size=run.batch_size, num_workers=run.num_workers,
                                            device=run.device, progress=False)
        owners_arr = np.array(owners, dtype=object)
        for file in files:
            if file.rel in failed:
                continue
            ids = np.flatnonzero(owners_arr == file.rel)
            errors = [found.errors[requests[i].name] for i in ids if requests[i].name in found.errors]
            vectors = found.features[ids, 0] if found.readable[ids].all() else None
            if errors or vectors is None:
                reason = errors[0] if errors else "a window could not be decoded"
                failed[file.rel] = SkippedFile(file.rel, file.size, file.mtime_ns, _reason(reason, str(root / file.rel)))
            elif not np.isfinite(vectors).all():
                failed[file.rel] = SkippedFile(file.rel, file.size, file.mtime_ns, "non-finite embedding")
            else:
                embedded[file.rel] = IndexedFile(file, np.array(spans[file.rel], np.float64), normalise_rows(vectors))
    return embedded, failed


def _write(index_dir: Path, header: dict, files: dict[str, IndexedFile], skipped: dict[str, SkippedFile]) -> dict:
    ordered = [files[rel] for rel in sorted(files)]
    rows = [WindowRow(f.file.rel, float(s), float(e), f.file.size, f.file.mtime_ns) for f in ordered for s, e in f.spans]
    dim = int(header["embed_dim"])
    vectors = np.concatenate([f.vectors for f in ordered]) if ordered else np.zeros((0, dim), np.float32)
    return commit(index_dir, header, rows, vectors, [skipped[rel] for rel in sorted(skipped)])


def update_index(video_root: str | os.PathLike, index_dir: str | os.PathLike, loaded: LoadedModel, checkpoint: dict,
                 protocol: WindowProtocol, run: IndexRun | None = None) -> UpdateReport:
    """Bring the index in ``index_dir`` up to date with ``video_root`` (building it when absent).

    ``checkpoint`` is the header record from :func:`mmpt_lite.search.model.load_search_model` for ``loaded``.
    SearchIndexError when the folder holds an index of another checkpoint, root or protocol.
    """
    run = run or IndexRun()
    started = time.perf_counter()
    root = Path(os.path.realpath(video_root))
    index_dir = Path(index_dir)
    protocol.check()
    with update_lock(index_dir):
        snapshot = read_snapshot(index_dir)
        if snapshot is not None:
            problem = compatibility_problem(snapshot.header, root, checkpoint, protocol)
            if problem:
                raise SearchIndexError(f"{index_dir}: {problem}")
        remove_stale(index_dir, keep=snapshot.header["files"]["table"].split("/")[0] if snapshot else None)
        model = loaded.model.to(run.device).eval()
        dim = embed_queries(loaded, ["video"], run.device).shape[1]
        header = {"video_root": str(root), "checkpoint": checkpoint, "protocol": protocol.to_json(),
                  "embed_dim": int(dim), "metric": METRIC}
        if snapshot is not None and snapshot.header.get("embed_dim") != dim:
            raise SearchIndexError(f"{index_dir}: {snapshot.header.get('embed_dim')}-d vectors, the model gives {dim}")

        files, refused = walk_videos(root)
        current = {f.rel: f for f in files}
        indexed = _indexed_files(snapshot)
        report = UpdateReport(header)
        report.removed = [rel for rel in indexed if rel not in current]
        report.changed = [rel for rel in indexed if rel in current and not indexed[rel].file.same_version(current[rel])]
        indexed = {rel: f for rel, f in indexed.items() if rel in current and f.file.same_version(current[rel])}
        report.reused = len(indexed)
        before = {s.rel: s for s in snapshot.skipped} if snapshot else {}
        skipped = {s.rel: s for s in refused}
        todo = []
        for file in files:
            if file.rel in indexed:
                continue
            previous = before.get(file.rel)
            if previous is not None and previous.version.same_version(file):
                skipped[file.rel] = previous   # failed before in this very version: not tried again
            else:
                todo.append(file)
        needs_commit = snapshot is None or bool(report.removed or report.changed or todo) or before != skipped

        with progress_bar(total=len(todo), desc="index", unit="video", disable=not run.progress) as bar:
            for first in range(0, len(todo), max(1, run.commit_every)):
                chunk = todo[first:first + max(1, run.commit_every)]
                embedded, failed = embed_files(model, root, chunk, protocol, run)
                indexed.update(embedded)
                skipped.update(failed)
                report.embedded += sorted(embedded)
                report.windows_embedded += sum(len(f.spans) for f in embedded.values())
                report.header = _write(index_dir, header, indexed, skipped)
                report.commits += 1
                bar.update(len(chunk))
                bar.set_postfix(skipped=len(skipped), refresh=False)
        if needs_commit and report.commits == 0:
            report.header = _write(index_dir, header, indexed, skipped)
            report.commits += 1
        elif not needs_commit:
            report.header = snapshot.header
        report.skipped = [skipped[rel] for rel in sorted(skipped)]
        report.seconds = time.perf_counter() - started
        return report
