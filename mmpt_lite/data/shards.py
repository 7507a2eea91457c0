"""Sharded, mmap-able storage of decoded video frames and captions: layout, readers, verification. The writer is
``shard_build.py``; ``docs/shards.md`` documents the format and the measurements behind it.

Layout of an output folder::

    manifest.json               the only entry point: storage parameters + one entry per finished shard
                                (file paths, byte sizes, sha256, video/frame/caption counts, skipped inputs)
    shard_00000/                one folder per shard, published with a single rename
        data.bin                frames: JPEG files / raw uint8 HxWx3 / one short-GOP mp4 per video, back to back
        byte_offsets.npy        int64 [F+1] per-frame byte offsets into data.bin (h264: [V+1] per video)
        video_starts.npy        int64 [V+1] frame range of video i = [starts[i], starts[i+1])
        video_ids.npy           bytes (UTF-8) [V]
        videos.npy              structured [V]: height, width, source_fps, source_duration
        caption_starts.npy      int64 [V+1] caption range of video i
        caption_times.npy       float32 [C, 2] (start, end) seconds, sorted by start within a video
        caption_text.bin        UTF-8 caption texts back to back
        caption_text_offsets.npy  int64 [C+1]
        item_crc32.npy          uint32 [F] crc32 of each frame's bytes in data.bin (h264: [V], each video's mp4)

All offset arrays follow VideoCLIP's scheme: ``starts[0] = 0``, ``starts[-1] = len``, item i is
``data[starts[i]:starts[i+1]]``. Readers never list folders: a shard exists once the manifest names it.

Integrity on read (not only by ``--verify``): opening a store checks every listed file's size against the
manifest (a truncation costs a stat) and the sha256 of every file but ``data.bin`` (offsets, ids, captions,
checksums: small; hashed once per process); each read of a frame (h264: of a video) checks its crc32 before
decoding. A mismatch raises :class:`ShardCorruptError`, one line naming the file, the video id and the frame.
Shards built before ``item_crc32.npy`` existed stay readable: their ``data.bin`` is checked for size only
(the store logs a warning saying so, and rebuilding them adds the checksums).
"""

from __future__ import annotations

import io
import json
import logging
import mmap
import os
import zlib
from pathlib import Path

import numpy as np
import simplejpeg

from mmpt_lite.data.video import read_clip, resize_rgb
from mmpt_lite.fileio import FileIntegrityError, atomic_write_text, file_sha256

MANIFEST_NAME = "manifest.json"
FORMAT_NAME = "mmpt_lite.shards"
FORMAT_VERSION = 1
STORAGE_KINDS = ("jpeg", "raw", "h264")
CHECKSUM_ROLE = "item_crc32"  # optional role (absent in shards built before it): per-item crc32 of data.bin
REPAIR_HINT = ("rerun scripts/shard_howto.py with the same options to rebuild damaged shards, or --verify to "
               "list every damaged file")
log = logging.getLogger("mmpt_lite")
# Files whose sha256 matched their manifest in this process, keyed by (path, size, mtime_ns, inode): the video
# and caption stores of one run open the same shards, and a rank hashes them once.
_HASHED: set[tuple[str, int, int, int]] = set()


class ShardCorruptError(FileIntegrityError):
    """A shard file differs from its manifest (missing, wrong size, wrong sha256) or an item fails its crc32."""


def item_crc32(payload) -> int:
    """crc32 of one stored item (a frame's JPEG or raw bytes, or a video's mp4), as ``item_crc32.npy`` holds it."""
    return zlib.crc32(payload) & 0xFFFFFFFF


def check_shard_files(root: Path, entry: dict) -> None:
    """Raise ShardCorruptError for the first file of a manifest entry that is missing, has another size than
    the manifest says, or (every file but ``data.bin``, whose items carry crc32s) another sha256."""
    for role, meta in entry["files"].items():
        path = root / meta["path"]
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise ShardCorruptError(f"{path}: missing ({role} file of {entry['name']}); {REPAIR_HINT}") from None
        if stat.st_size != meta["bytes"]:
            raise ShardCorruptError(f"{path}: {stat.st_size} bytes but the manifest says {meta['bytes']} (truncated "
                                    f"or rewritten); {REPAIR_HINT}")
        key = (str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)
        if role == "data" or key in _HASHED:
            continue
        if file_sha256(path) != meta["sha256"]:
            raise ShardCorruptError(f"{path}: sha256 differs from the manifest (corrupted {role} file of "
                                    f"{entry['name']}); {REPAIR_HINT}")
        _HASHED.add(key)


def load_manifest(root: str | Path) -> dict:
    path = Path(root) / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no manifest (not a shard folder, or no shard finished yet)") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: unreadable manifest ({err})") from err
    if manifest.get("format") != FORMAT_NAME or manifest.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path}: not a {FORMAT_NAME} v{FORMAT_VERSION} manifest")
    return manifest


def write_json_atomic(path: Path, payload: dict) -> None:
    """Write JSON atomically and durably: readers see the old or the new file, even after a crash."""
    atomic_write_text(path, json.dumps(payload, indent=1), fsync=True)


def verify_shard_entry(root: Path, entry: dict) -> list[str]:
    """Problems with one shard's files (missing, wrong size, wrong sha256); empty if intact."""
    problems = []
    for role, meta in entry["files"].items():
        path = root / meta["path"]
        if not path.is_file():
            problems.append(f"{path}: missing ({role} file of {entry['name']})")
            continue
        size = path.stat().st_size
        if size != meta["bytes"]:
            problems.append(f"{path}: {size} bytes but the manifest says {meta['bytes']} (truncated or rewritten)")
        elif file_sha256(path) != meta["sha256"]:
            problems.append(f"{path}: sha256 differs from the manifest (corrupted)")
    return problems


def verify_shards(root: str | Path) -> list[str]:
    """Re-hash every file the manifest lists; returns one message per problem (each names the file)."""
    root = Path(root)
    try:
        manifest = load_manifest(root)
    except (FileNotFoundError, ValueError) as err:
        return [str(err)]
    problems = []
    for entry in manifest["shards"]:
        problems += verify_shard_entry(root, entry)
    return problems


class _ShardIndex:
    """Manifest + a video-id index kept in numpy arrays + lazily opened, per-process mmaps.

    Only small arrays are read at construction; files are mapped on first use in the process that uses them,
    so a store built before DataLoader workers fork (or pickled to spawned workers) opens its own mappings.
    The id index lives in numpy arrays rather than a dict of Python strings, so forked workers do not copy it
    page by page through reference counting.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.manifest = load_manifest(self.root)
        self._shards = self.manifest["shards"]
        for entry in self._shards:
            check_shard_files(self.root, entry)
        ids, shard_of, local = [], [], []
        for pos in range(len(self._shards)):
            shard_ids = np.load(self._path(pos, "video_ids"))
            ids.append(shard_ids)
            shard_of.append(np.full(len(shard_ids), pos, np.int32))
            local.append(np.arange(len(shard_ids), dtype=np.int64))
        self._ids = np.concatenate(ids) if ids else np.zeros(0, "S1")
        self._shard_of = np.concatenate(shard_of) if ids else np.zeros(0, np.int32)
        self._local = np.concatenate(local) if ids else np.zeros(0, np.int64)
        self._sorted = np.argsort(self._ids, kind="stable")
        self._video_ids: list[str] | None = None
        self._pid: int | None = None
        self._handles: dict = {}

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_pid"], state["_handles"], state["_video_ids"] = None, {}, None
        return state

    @property
    def video_ids(self) -> list[str]:
        """Every stored video id, in shard order."""
        if self._video_ids is None:
            self._video_ids = [v.decode() for v in self._ids.tolist()]
        return self._video_ids

    def _locate(self, video_id: str) -> tuple[int, int]:
        key = video_id.encode()
        pos = int(np.searchsorted(self._ids, key, sorter=self._sorted))
        if pos >= len(self._ids) or self._ids[self._sorted[pos]] != key:
            raise KeyError(f"video {video_id!r} is not in the shards under {self.root}")
        i = self._sorted[pos]
        return int(self._shard_of[i]), int(self._local[i])

    def _path(self, pos: int, role: str) -> Path:
        return self.root / self._shards[pos]["files"][role]["path"]

    def _handle(self, pos: int, role: str):
        """mmap-backed array (``.npy``) or memoryview (``.bin``) of one shard file, opened once per process."""
        if self._pid != os.getpid():
            self._pid, self._handles = os.getpid(), {}
        key = (pos, role)
        if key not in self._handles:
            path = self._path(pos, role)
            if path.suffix == ".npy":
                self._handles[key] = np.load(path, mmap_mode="r")
            elif path.stat().st_size == 0:   # mmap refuses empty files
                self._handles[key] = memoryview(b"")
            else:
                with open(path, "rb") as f:
                    self._handles[key] = memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
        return self._handles[key]

    def _range(self, pos: int, role: str, i: int) -> tuple[int, int]:
        starts = self._handle(pos, role)
        return int(starts[i]), int(starts[i + 1])


class ShardedVideoStore(_ShardIndex):
    """Random access to the frames of sharded videos (stored at ``fps`` frames per second)."""

    def __init__(self, root: str | Path):
        super().__init__(root)
        if self.manifest.get("mode") != "video":
            raise ValueError(f"{self.root}: holds {self.manifest.get('mode')} shards, not video frames")
        self.storage: dict = self.manifest["storage"]
        self.fps: float = float(self.storage["fps"])
        unchecked = sum(CHECKSUM_ROLE not in entry["files"] for entry in self._shards)
        if unchecked:
            log.warning("%s: %d of %d shards were built without per-frame checksums (%s): their data.bin is checked "
                        "for its size only; rebuild them into a new folder to check every frame on read", self.root,
                        unchecked, len(self._shards), CHECKSUM_ROLE + ".npy")

    def _check_items(self, pos: int, video_id: str, items: range | list[int], first: int) -> None:
        """crc32 of data.bin items ``items`` (indices into the shard's byte_offsets) against item_crc32.npy;
        ``first`` = the video's first item, so frame numbers in messages count from the video's start."""
        if CHECKSUM_ROLE not in self._shards[pos]["files"]:
            return
        offsets, data, stored = (self._handle(pos, role) for role in ("byte_offsets", "data", CHECKSUM_ROLE))
        for k in items:
            read = item_crc32(data[int(offsets[k]):int(offsets[k + 1])])
            if read != int(stored[k]):
                what = f"video {video_id!r}" if self.storage["kind"] == "h264" else f"frame {k - first} of video {video_id!r}"
                raise ShardCorruptError(f"{self._path(pos, 'data')}: {what} fails its crc32 check (stored "
                                        f"{int(stored[k]):08x}, read {read:08x}); {REPAIR_HINT}")

    def num_frames(self, video_id: str) -> int:
        pos, i = self._locate(video_id)
        first, stop = self._range(pos, "video_starts", i)
        return stop - first

    def frame_size(self, video_id: str) -> tuple[int, int]:
        """(height, width) of the video's stored frames, without decoding any."""
        pos, i = self._locate(video_id)
        row = self._handle(pos, "videos")[i]
        return int(row["height"]), int(row["width"])

    def encoded_frames(self, video_id: str, indices: np.ndarray) -> list[memoryview]:
        """The stored JPEG files of frames ``indices`` (int [N], each in ``[0, num_frames)``), undecoded: views
        into the shard's mmap, for a decoder outside this process's Python (DALI, nvJPEG). JPEG storage only."""
        if self.storage["kind"] != "jpeg":
            raise ValueError(f"{self.root}: frames are stored as {self.storage['kind']}, not JPEG files")
        pos, i = self._locate(video_id)
        first, stop = self._range(pos, "video_starts", i)
        indices = np.asarray(indices, np.int64)
        if len(indices) and (indices.min() < 0 or indices.max() >= stop - first):
            raise IndexError(f"video {video_id!r} has {stop - first} frames; asked for frames "
                             f"{indices.min()}..{indices.max()}")
        self._check_items(pos, video_id, [first + j for j in indices.tolist()], first)
        offsets, data = self._handle(pos, "byte_offsets"), self._handle(pos, "data")
        return [data[int(offsets[first + j]):int(offsets[first + j + 1])] for j in indices.tolist()]

    def read_frames(self, video_id: str, start: int, count: int,
                    out_size: tuple[int, int] | None = None) -> np.ndarray:
        """Frames ``start .. start+count-1`` (frame i shows time ``i / fps``), uint8 ``[count', H, W, 3]``.

        ``count'`` is smaller than ``count`` when the video ends first (no padding here). ``out_size`` =
        (height, width) resizes every frame (JPEG frames are first shrunk by libjpeg's DCT scaling when the
        target is at most half the stored size).
        """
        if start < 0 or count < 0:
            raise ValueError(f"start and count must be >= 0, got start={start}, count={count}")
        pos, i = self._locate(video_id)
        first, stop = self._range(pos, "video_starts", i)
        start, stop = min(first + start, stop), min(first + start + count, stop)
        row = self._handle(pos, "videos")[i]
        height, width = out_size or (int(row["height"]), int(row["width"]))
        out = np.empty((stop - start, height, width, 3), np.uint8)
        if stop == start:
            return out
        kind = self.storage["kind"]
        self._check_items(pos, video_id, [i] if kind == "h264" else range(start, stop), first)
        if kind == "raw":
            frames = self._raw_frames(pos, start, stop, int(row["height"]), int(row["width"]))
        elif kind == "jpeg":
            return self._decode_jpegs(pos, start, stop, out, resize=out_size is not None)
        else:
            frames = self._h264_frames(pos, i, start - first, stop - start)
        for j, frame in enumerate(frames):
            out[j] = resize_rgb(frame, width, height) if out_size else frame
        return out

    def _raw_frames(self, pos: int, start: int, stop: int, height: int, width: int) -> np.ndarray:
        offsets = self._handle(pos, "byte_offsets")
        data = self._handle(pos, "data")[int(offsets[start]):int(offsets[stop])]
        return np.frombuffer(data, np.uint8).reshape(stop - start, height, width, 3)

    def _decode_jpegs(self, pos: int, start: int, stop: int, out: np.ndarray, resize: bool) -> np.ndarray:
        offsets = np.asarray(self._handle(pos, "byte_offsets")[start:stop + 1])
        data = self._handle(pos, "data")
        height, width = out.shape[1:3]
        for j in range(stop - start):
            jpeg = data[int(offsets[j]):int(offsets[j + 1])]
            if resize:
                image = simplejpeg.decode_jpeg(jpeg, colorspace="RGB", min_height=height, min_width=width)
                out[j] = resize_rgb(image, width, height)
            else:   # decode straight into the output array
                simplejpeg.decode_jpeg(jpeg, colorspace="RGB", buffer=out[j])
        return out

    def _h264_frames(self, pos: int, i: int, start: int, count: int) -> np.ndarray:
        begin, end = self._range(pos, "byte_offsets", i)
        mp4 = _ViewReader(self._handle(pos, "data")[begin:end], name=f"{self._path(pos, 'data')}[video {i}]")
        return read_clip(mp4, start / self.fps, num_frames=count, pad=False)


class _ViewReader(io.RawIOBase):
    """Seekable read-only file over a memoryview: PyAV reads one video's mp4 straight from the shard's mmap
    (``io.BytesIO`` would copy the whole video for every clip)."""

    def __init__(self, view: memoryview, name: str):
        super().__init__()
        self.view, self.position, self.name = view, 0, name   # name: for error messages

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = max(0, min(len(buffer), len(self.view) - self.position))
        buffer[:count] = self.view[self.position:self.position + count]
        self.position += count
        return count

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: len(self.view)}[whence]
        self.position = base + offset
        return self.position

    def tell(self) -> int:
        return self.position


class ShardedCaptionStore(_ShardIndex):
    """Caption tables of sharded videos."""

    def get(self, video_id: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(starts float32 [n], ends float32 [n], texts) of ``video_id``, sorted by start time."""
        pos, i = self._locate(video_id)
        first, stop = self._range(pos, "caption_starts", i)
        times = np.array(self._handle(pos, "caption_times")[first:stop], np.float32).reshape(-1, 2)
        offsets = self._handle(pos, "caption_text_offsets")[first:stop + 1]
        text = self._handle(pos, "caption_text")
        texts = [bytes(text[int(a):int(b)]).decode("utf-8") for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
        return times[:, 0].copy(), times[:, 1].copy(), texts
