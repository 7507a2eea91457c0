"""HowTo100M-format corpus inputs that the shard writer (``shard_build.py``) reads: the video list (column
``video_path``) and the per-video caption files (``start,end,text``), with every problem reported as a Skip.
"""

from __future__ import annotations

import codecs
import csv
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CAPTION_COLUMNS = ("start", "end", "text")
# Longer than any spoken sentence: such a text is a parse accident (e.g. a stray quote), not narration.
MAX_CAPTION_CHARS = 10_000


@dataclass(frozen=True)
class CorpusItem:
    video_id: str
    video_path: str | None = None
    caption_path: str | None = None


@dataclass(frozen=True)
class Skip:
    kind: str          # video | captions | caption_row | video_list | orphan_captions
    video_id: str
    file: str
    line: int | None
    reason: str


class CaptionError(ValueError):
    def __init__(self, path, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


def read_caption_file(path: str | Path) -> tuple[np.ndarray, list[str], list[tuple[int, str]]]:
    """Parse a ``start,end,text`` CSV: (times float32 [n, 2] sorted by start, texts, dropped (line, reason)).

    A UTF-8 BOM and CRLF line ends are accepted. Rows are dropped and returned (with the line they end on) for a
    non-numeric, non-finite or negative time, ``end < start``, bytes that are not valid UTF-8, a text over
    ``MAX_CAPTION_CHARS`` characters, or an unclosed quote that runs to the end of the file. The row count is not
    limited (parsing is linear). A file with no usable row, a missing column or no content raises CaptionError.
    """
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise CaptionError(path, "caption file not found") from None
    except OSError as err:
        raise CaptionError(path, f"unreadable caption file ({err})") from err
    raw = raw.removeprefix(codecs.BOM_UTF8)
    try:
        content, bad_bytes = raw.decode("utf-8"), set()
    except UnicodeDecodeError:
        content, bad_bytes = raw.decode("utf-8", errors="replace"), _undecodable_lines(raw)
    if not content.strip():
        raise CaptionError(path, "empty caption file")
    rows, dropped, last_kept, lines = [], [], False, range(0)
    limit = csv.field_size_limit()
    # The csv module refuses fields over 128 KiB by raising mid-file; read every field and judge its size here.
    csv.field_size_limit(max(limit, len(content) + 1))
    try:
        reader = csv.DictReader(io.StringIO(content, newline=""))
        missing = [c for c in CAPTION_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise CaptionError(path, f"missing column(s) {', '.join(missing)} (header: {reader.fieldnames})")
        first_line = reader.line_num + 1
        for row in reader:
            lines = range(first_line, reader.line_num + 1)   # the physical lines this row spans
            first_line = reader.line_num + 1
            problem = _row_problem(row, lines, bad_bytes)
            last_kept = problem is None
            if problem:
                dropped.append((reader.line_num, problem))
            else:
                rows.append((float(row["start"]), float(row["end"]), row["text"] or ""))
    except csv.Error as err:   # the rest of the file cannot be split into rows
        last_kept = False
        dropped.append((reader.line_num, f"unparseable from here on ({err})"))
    finally:
        csv.field_size_limit(limit)
    if last_kept and len(lines) > 1 and content.count('"') % 2:
        # An odd number of quotes: the last row's text opened a quote that never closed and swallowed every line
        # after it; that row is not narration.
        rows.pop()
        dropped.append((lines[0], f"unclosed quote: the text runs from line {lines[0]} to the end of the file "
                                  f"(line {lines[-1]})"))
    if not rows:
        detail = f"; {len(dropped)} invalid, first at line {dropped[0][0]}: {dropped[0][1]}" if dropped else ""
        raise CaptionError(path, f"no valid caption rows{detail}")
    rows.sort(key=lambda r: r[0])
    return np.array([r[:2] for r in rows], np.float32), [r[2] for r in rows], dropped


def _row_problem(row: dict, lines: range, bad_bytes: set[int]) -> str | None:
    """Why a parsed caption row is unusable, or None."""
    try:
        start, end = float(row["start"]), float(row["end"])
    except (TypeError, ValueError):
        return f"non-numeric time (start={row['start']!r}, end={row['end']!r})"
    if not (math.isfinite(start) and math.isfinite(end)):
        return f"non-finite time (start={start}, end={end})"
    if start < 0 or end < 0:
        return f"negative time (start={start}, end={end})"
    if end < start:
        return f"end {end} < start {start}"
    if bad_bytes.intersection(lines):
        return "text is not valid UTF-8"
    text = row["text"] or ""
    if len(text) > MAX_CAPTION_CHARS:
        return f"text is {len(text):,} characters long (limit {MAX_CAPTION_CHARS:,})"
    return None


def _undecodable_lines(raw: bytes) -> set[int]:
    """1-based numbers of the lines of ``raw`` that are not valid UTF-8 (newline bytes never occur inside a
    multi-byte UTF-8 sequence, so each line can be checked on its own)."""
    bad = set()
    for number, line in enumerate(raw.split(b"\n"), 1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            bad.add(number)
    return bad


def read_video_list(csv_path: str | Path, video_root: str | Path | None = None,
                    caption_root: str | Path | None = None) -> tuple[list[CorpusItem], list[Skip]]:
    """HowTo100M list (column ``video_path``; id = file name without extension) -> items + list problems.

    Lines with an empty path, a repeated id, or (with a ``video_root``) a path that leads out of ``video_root``
    (``../``, an absolute path elsewhere) are skipped and reported with their line. Also reports caption files in
    ``caption_root`` that belong to no listed video. A list that cannot be read, has no ``video_path`` column or
    cannot be split into rows raises FileNotFoundError / ValueError naming the file (and line).
    """
    try:
        content = Path(csv_path).read_bytes().decode("utf-8-sig", errors="replace")
    except FileNotFoundError:
        raise FileNotFoundError(f"{csv_path}: video list not found") from None
    except OSError as err:
        raise ValueError(f"{csv_path}: cannot read the video list ({err})") from None
    reader = csv.DictReader(io.StringIO(content, newline=""))
    items, skips, seen = [], [], set()
    try:
        if "video_path" not in (reader.fieldnames or []):
            raise ValueError(f"{csv_path}: no 'video_path' column (columns: {reader.fieldnames or []})")
        for row in reader:
            line, rel = reader.line_num, (row["video_path"] or "").strip()
            video_id = Path(rel).stem
            if not rel:
                skips.append(Skip("video_list", "", str(csv_path), line, "empty video_path"))
            elif video_root and _outside(video_root, rel):
                skips.append(Skip("video_list", video_id, str(csv_path), line,
                                  f"{rel!r} is outside the video root {video_root}"))
            elif video_id in seen:
                skips.append(Skip("video_list", video_id, str(csv_path), line, "duplicate video id"))
            else:
                seen.add(video_id)
                captions = str(Path(caption_root) / f"{video_id}.csv") if caption_root else None
                items.append(CorpusItem(video_id, str(Path(video_root or "") / rel), captions))
    except csv.Error as err:
        raise ValueError(f"{csv_path}:{reader.line_num}: cannot split the list into rows ({err})") from None
    return items, skips + _orphan_captions(caption_root, seen)


def _outside(root: str | Path, rel: str) -> bool:
    """Whether ``rel`` (relative to ``root``, or absolute) names a path out of ``root`` (symlinks not followed)."""
    base = os.path.abspath(root)
    return os.path.commonpath([base, os.path.abspath(os.path.join(base, rel))]) != base


def _orphan_captions(caption_root, video_ids: set[str]) -> list[Skip]:
    if not caption_root:
        return []
    return [Skip("orphan_captions", p.stem, str(p), None, "caption file with no video in the list")
            for p in sorted(Path(caption_root).glob("*.csv")) if p.stem not in video_ids]
