"""On-disk cache of extracted evaluation features, keyed by what determines them.

A key hashes the checkpoint's sha256, the protocol parameters, the list file's sha256 and a
fingerprint (path, size, mtime) of the videos, so changing any of them misses the cache while
re-running an HMDB probe with another SVM C reuses the features. Entries are ``.npz`` files written
to a temporary name and renamed, so an interrupted run never leaves a truncated entry behind.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

DEFAULT_CACHE_DIR = Path("~/.cache/mmpt_lite/features").expanduser()


def files_fingerprint(paths: list[Path]) -> str:
    """sha256 over (path, size, mtime_ns) of each file; a missing file contributes its path only.

    Statting is enough here: re-encoding or replacing a video changes its size or mtime, and hashing
    every video's bytes would cost as much as decoding them.
    """
    digest = hashlib.sha256()
    for path in paths:
        try:
            stat = os.stat(path)
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}\0missing\n".encode())
    return digest.hexdigest()


def cache_key(parts: dict) -> str:
    """Stable sha256 of a JSON-serialisable mapping."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class FeatureCache:
    """``root/<key[:2]>/<key>.npz``; ``root=None`` disables caching."""

    def __init__(self, root: str | Path | None):
        self.root = Path(root).expanduser() if root is not None else None

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npz"

    def load(self, key: str) -> dict[str, np.ndarray] | None:
        """The cached arrays, or None on a miss (or an unreadable entry, which is then recomputed)."""
        if self.root is None or not self._path(key).is_file():
            return None
        try:
            with np.load(self._path(key), allow_pickle=False) as data:
                return {name: data[name] for name in data.files}
        except (OSError, ValueError):
            return None

    def save(self, key: str, arrays: dict[str, np.ndarray]) -> Path | None:
        if self.root is None:
            return None
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
        return path
