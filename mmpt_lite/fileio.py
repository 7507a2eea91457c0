"""File helpers shared by every layer: content hashes, atomic (temp file + rename) writes, and the error a
reader raises when a file's bytes differ from what its writer recorded."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


class FileIntegrityError(ValueError):
    """A file's bytes differ from what its writer recorded (size, sha256 or crc32): truncated, rewritten or
    bit-flipped. The message is one line naming the file (and the item inside it) and what to do.

    It stays one line across a DataLoader worker: torch re-raises a worker's exception in the main process as
    ``type(exc)(text)``, text = "Caught <name> in DataLoader worker process N." and the worker's traceback, whose
    last line is ``<module>.<name>: <msg>``; the constructor keeps only ``<msg>`` (the worker's stack says nothing
    about a damaged file).
    """

    def __init__(self, message: str):
        if message.startswith(f"Caught {type(self).__name__} ") and "\n" in message:
            message = message.rstrip().splitlines()[-1].split(": ", 1)[-1]
        super().__init__(message)


def file_sha256(path: str | os.PathLike, chunk_bytes: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_text(path: str | os.PathLike, text: str, *, fsync: bool = False) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it over ``path``: readers see the
    old file or the new one, never a half-written one. ``fsync`` also survives a machine crash."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk (ENOSPC) or a kill: leave no half-written temporary behind
        tmp.unlink(missing_ok=True)
        raise


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a written file, or a folder's entries (after a rename into it), to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
