"""Which files of a video folder are videos: a recursive walk with case-insensitive extensions.

Paths are kept relative to the folder ('/'-separated), with the size and modification time that tell
an incremental update whether a file changed. A symlink is followed only when it resolves to a file
inside the folder: the index, and the web app that serves its files, must never reach outside it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov")


@dataclass(frozen=True)
class VideoFile:
    """A video found under the root: ``rel`` (relative, '/'-separated), byte size, mtime in nanoseconds."""

    rel: str
    size: int
    mtime_ns: int

    def same_version(self, other: VideoFile) -> bool:
        return self.size == other.size and self.mtime_ns == other.mtime_ns


@dataclass(frozen=True)
class SkippedFile:
    """A video that is not in the index, the version of it that failed, and why."""

    rel: str
    size: int
    mtime_ns: int
    reason: str

    @property
    def version(self) -> VideoFile:
        return VideoFile(self.rel, self.size, self.mtime_ns)


def is_video_name(name: str) -> bool:
    return name.lower().endswith(VIDEO_EXTENSIONS)


def inside(root_real: Path, path: str | os.PathLike) -> bool:
    """Whether ``path`` resolves (symlinks followed) to a place under the resolved root."""
    try:
        return Path(os.path.realpath(path)).is_relative_to(root_real)
    except (OSError, ValueError):
        return False


def walk_videos(root: str | os.PathLike) -> tuple[list[VideoFile], list[SkippedFile]]:
    """Every video under ``root`` sorted by relative path, and the video-named entries that were refused
    (symlinks leaving the folder, broken symlinks, files that cannot be stat'ed).

    Directory symlinks are not followed (``os.walk`` default), so a link cannot pull in an outside tree.
    """
    root = Path(root)
    root_real = Path(os.path.realpath(root))
    found, refused = [], []
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names):
            if not is_video_name(name):
                continue
            path = Path(folder) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink() and not inside(root_real, path):
                refused.append(SkippedFile(rel, 0, 0, "symlink to a file outside the video folder"))
                continue
            try:
                stat = path.stat()
            except OSError as exc:
                refused.append(SkippedFile(rel, 0, 0, f"cannot stat ({exc.strerror or exc})"))
                continue
            if not path.is_file():
                continue
            found.append(VideoFile(rel, stat.st_size, stat.st_mtime_ns))
    found.sort(key=lambda f: f.rel)
    refused.sort(key=lambda f: f.rel)
    return found, refused
