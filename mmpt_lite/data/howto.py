"""HowTo100M-format corpus inputs that the shard writer (``shard_build.py``) reads: the video list (column
``video_path``) and the per-video caption files (``start,end,text``), with every problem reported as a Skip.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

CAPTION_COLUMNS = ("start", "end", "text")


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

    Rows with a non-numeric or non-finite time or ``end < start`` are dropped and returned; a file with no
    usable row, a missing column or no content raises CaptionError.
    """
    try:
        content = Path(path).read_bytes().decode("utf-8-sig", errors="replace")
    except FileNotFoundError:
        raise CaptionError(path, "caption file not found") from None
    except OSError as err:
        raise CaptionError(path, f"unreadable caption file ({err})") from err
    if not content.strip():
        raise CaptionError(path, "empty caption file")
    reader = csv.DictReader(io.StringIO(content))
    missing = [c for c in CAPTION_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise CaptionError(path, f"missing column(s) {', '.join(missing)} (header: {reader.fieldnames})")
    rows, dropped = [], []
    for row in reader:
        try:
            start, end = float(row["start"]), float(row["end"])
        except (TypeError, ValueError):
            dropped.append((reader.line_num, f"non-numeric time (start={row['start']!r}, end={row['end']!r})"))
            continue
        if not (math.isfinite(start) and math.isfinite(end)):
            dropped.append((reader.line_num, f"non-finite time (start={start}, end={end})"))
        elif end < start:
            dropped.append((reader.line_num, f"end {end} < start {start}"))
        else:
            rows.append((start, end, row["text"] or ""))
    if not rows:
        detail = f"; {len(dropped)} invalid, first at line {dropped[0][0]}: {dropped[0][1]}" if dropped else ""
        raise CaptionError(path, f"no valid caption rows{detail}")
    rows.sort(key=lambda r: r[0])
    return np.array([r[:2] for r in rows], np.float32), [r[2] for r in rows], dropped


def read_video_list(csv_path: str | Path, video_root: str | Path | None = None,
                    caption_root: str | Path | None = None) -> tuple[list[CorpusItem], list[Skip]]:
    """HowTo100M list (column ``video_path``; id = file name without extension) -> items + list problems.

    Also reports caption files in ``caption_root`` that belong to no listed video.
    """
    table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    if "video_path" not in table.columns:
        raise ValueError(f"{csv_path}: no 'video_path' column (columns: {list(table.columns)})")
    items, skips, seen = [], [], set()
    for line, rel in enumerate(table["video_path"], start=2):   # line 1 is the header
        rel = rel.strip()
        video_id = Path(rel).stem
        if not rel:
            skips.append(Skip("video_list", "", str(csv_path), line, "empty video_path"))
        elif video_id in seen:
            skips.append(Skip("video_list", video_id, str(csv_path), line, "duplicate video id"))
        else:
            seen.add(video_id)
            captions = str(Path(caption_root) / f"{video_id}.csv") if caption_root else None
            items.append(CorpusItem(video_id, str(Path(video_root or "") / rel), captions))
    return items, skips + _orphan_captions(caption_root, seen)


def _orphan_captions(caption_root, video_ids: set[str]) -> list[Skip]:
    if not caption_root:
        return []
    return [Skip("orphan_captions", p.stem, str(p), None, "caption file with no video in the list")
            for p in sorted(Path(caption_root).glob("*.csv")) if p.stem not in video_ids]
