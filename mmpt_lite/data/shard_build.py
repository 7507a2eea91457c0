"""Build frame shards (layout in ``shards.py``) from a HowTo100M-style corpus (inputs read by ``howto.py``).

Flow: read the video list -> cut it into fixed shards of ``videos_per_shard`` -> keep the shards the manifest
already holds for the same inputs with intact files -> worker processes decode and encode one video each into a
part file inside the shard's hidden ``.tmp-*`` folder -> when a shard's last video is back, the main process
concatenates the parts into the shard files, moves them into place and only then adds the manifest entry (so a
crash leaves either no shard or a complete one). Unreadable videos and bad caption files are skipped and
reported (``report.json``, ``skipped.csv``), never fatal.
"""

from __future__ import annotations

import csv
import fcntl
import functools
import hashlib
import io
import itertools
import json
import multiprocessing as mp
import os
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import simplejpeg

from mmpt_lite.data.decoders import get_decoder
from mmpt_lite.data.howto import CaptionError, CorpusItem, Skip, read_caption_file, read_video_list
from mmpt_lite.data.shards import (
    CHECKSUM_ROLE,
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    STORAGE_KINDS,
    item_crc32,
    load_manifest,
    verify_shard_entry,
    write_json_atomic,
)
from mmpt_lite.data.video import (
    SpatialTransform,
    VideoDecodeError,
    iter_clip_frames,
    probe_video,
    read_all_frames,
    resolve_video_path,
)
from mmpt_lite.fileio import file_sha256
from mmpt_lite.progress import progress_bar

# Skip kinds that remove a listed video from the output (the others are informational).
DROPPED_VIDEO_KINDS = ("video", "captions")


@dataclass(frozen=True)
class StorageSpec:
    """How frames are stored: ``kind`` (jpeg | raw | h264), sampled at ``fps``, short side resized."""

    kind: str = "jpeg"
    fps: float = 5.0
    short_side: int | None = 128
    jpeg_quality: int = 90
    gop: int = 16          # h264: keyframe every ``gop`` stored frames, so a clip decodes < gop extra frames
    crf: int = 23          # h264 quality

    def __post_init__(self):
        if self.kind not in STORAGE_KINDS:
            raise ValueError(f"storage kind must be one of {STORAGE_KINDS}, got {self.kind!r}")
        if self.fps <= 0:
            raise ValueError(f"fps must be positive, got {self.fps}")
        if self.kind == "h264" and (self.short_side is None or self.short_side % 2):
            raise ValueError("h264 storage needs an even short_side (yuv420p)")


class _CaptionArrays:
    """Caption tables of the videos of one shard, in the offset scheme of ``shards.py``."""

    def __init__(self):
        self.starts, self.times, self.text, self.text_offsets = [0], [], bytearray(), [0]

    def add(self, times: np.ndarray, texts: list[str]) -> None:
        self.starts.append(self.starts[-1] + len(texts))
        self.times.append(times)
        for text in texts:
            self.text += text.encode("utf-8")
            self.text_offsets.append(len(self.text))

    def arrays(self) -> dict[str, np.ndarray]:
        times = np.concatenate(self.times) if self.times else np.zeros((0, 2), np.float32)
        return {"caption_starts": np.array(self.starts, np.int64), "caption_times": times.astype(np.float32),
                "caption_text_offsets": np.array(self.text_offsets, np.int64)}


def _write_synced(path: Path, write) -> Path:
    """``write(file)`` into ``path``, then fsync: the manifest entry that follows must point at durable data."""
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    return path


def _ids_array(video_ids: list[str]) -> np.ndarray:
    encoded = [v.encode("utf-8") for v in video_ids]
    return np.array(encoded, dtype=f"S{max([1, *map(len, encoded)])}")


@dataclass(frozen=True)
class _ShardTask:
    index: int
    name: str                      # shard folder
    items: tuple[CorpusItem, ...]
    inputs_sha256: str
    storage: StorageSpec
    tmp_dir: str                   # hidden folder the shard is assembled in


@dataclass(frozen=True)
class _ItemTask:
    """One video to encode into ``part_path``, a piece of shard ``shard`` at ``slot``."""

    shard: int
    slot: int
    item: CorpusItem
    storage: StorageSpec
    decoder: str                    # mmpt_lite.data.decoders name
    part_path: str


def _process_item(task: _ItemTask) -> dict:
    """Worker: captions + payload of one item. Returns its index row; ``ok`` is False when it was skipped."""
    skips: list[Skip] = []
    row = {"shard": task.shard, "slot": task.slot, "video_id": task.item.video_id, "ok": False, "skips": skips}
    video_path = resolve_video_path(task.item.video_path)
    if not os.path.exists(video_path):   # named as a missing video, not by its (also absent) caption file
        skips.append(Skip("video", task.item.video_id, video_path, None, "file not found"))
        return row
    captions = _read_captions(task.item, skips)
    if captions is None:
        return row
    try:
        row.update(_encode_video(video_path, task.storage, task.decoder, Path(task.part_path)))
    except VideoDecodeError as err:
        skips.append(Skip("video", task.item.video_id, err.path, None, err.reason))
        return row
    except Exception as err:  # noqa: BLE001 - one file the decoders trip over must not end a long build
        skips.append(Skip("video", task.item.video_id, video_path, None, f"{type(err).__name__}: {err}"))
        return row
    row.update(ok=True, caption_times=captions[0], caption_texts=captions[1])
    return row


def _read_captions(item: CorpusItem, skips: list[Skip]) -> tuple[np.ndarray, list[str]] | None:
    """The item's captions (empty without a caption file); None (and a Skip) when the file is unusable."""
    if item.caption_path is None:
        return np.zeros((0, 2), np.float32), []
    try:
        times, texts, dropped = read_caption_file(item.caption_path)
    except CaptionError as err:
        skips.append(Skip("captions", item.video_id, err.path, None, err.reason))
        return None
    skips += [Skip("caption_row", item.video_id, item.caption_path, line, why) for line, why in dropped]
    return times, texts


def _encode_video(path: str, storage: StorageSpec, decoder: str, part: Path) -> dict:
    """Decode ``path`` once at ``storage.fps`` with ``decoder``, write its stored form to ``part``; VideoDecodeError."""
    try:
        info = probe_video(path)
        transform = SpatialTransform(short_side=storage.short_side, crop_mode="none")
        if decoder == "pyav":   # streamed: a long video never sits in memory whole
            frames = iter_clip_frames(path, 0.0, fps=storage.fps, transform=transform)
        else:
            frames = iter(read_all_frames(path, fps=storage.fps, transform=transform, backend=decoder))
        sizes, crcs, height, width = [], [], 0, 0
        with open(part, "wb") as f:
            if storage.kind == "h264":
                blob, count, height, width = _encode_h264(frames, storage)
                f.write(blob)
                sizes, crcs = [len(blob)], [item_crc32(blob)]
            else:
                for frame in frames:
                    height, width = frame.shape[:2]
                    payload = (simplejpeg.encode_jpeg(frame, quality=storage.jpeg_quality, colorspace="RGB",
                                                      colorsubsampling="420")
                               if storage.kind == "jpeg" else frame.tobytes())
                    f.write(payload)
                    sizes.append(len(payload))
                    crcs.append(item_crc32(payload))  # of the bytes as encoded, before any copy
                count = len(sizes)
    except (av.FFmpegError, ValueError) as err:   # from the h264 encoder or odd frame sizes
        raise VideoDecodeError(path, f"re-encoding failed ({err})") from err
    if count == 0:
        raise VideoDecodeError(path, "no frame decoded")
    return {"num_frames": count, "byte_sizes": sizes, "crc32": crcs, "height": height, "width": width,
            "source_fps": info.fps, "source_duration": info.duration}


def _encode_h264(frames, storage: StorageSpec) -> tuple[bytes, int, int, int]:
    """Re-encode RGB frames to an in-memory mp4 with a fixed short GOP and no B-frames (cheap seeks)."""
    first = next(frames, None)
    if first is None:
        return b"", 0, 0, 0
    height, width = first.shape[:2]
    buffer, count = io.BytesIO(), 0
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(storage.fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.thread_count = 1
        stream.options = {"crf": str(storage.crf), "preset": "veryfast", "tune": "fastdecode",
                          "x264-params": f"keyint={storage.gop}:min-keyint={storage.gop}:scenecut=0:bframes=0"}
        for image in itertools.chain([first], frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = count
            container.mux(stream.encode(frame))
            count += 1
        container.mux(stream.encode(None))
    return buffer.getvalue(), count, height, width


def _assemble_shard(task: _ShardTask, rows: list[dict]) -> dict:
    """Main process: concatenate the parts of a finished shard (rows in slot order) into the shard files in
    ``task.tmp_dir``; returns the manifest entry (paths relative to the output root)."""
    folder, kept = Path(task.tmp_dir), [r for r in rows if r["ok"]]
    parts = [folder / "parts" / f"{r['slot']:06d}" for r in kept]
    captions = _CaptionArrays()
    for r in kept:
        captions.add(r["caption_times"], r["caption_texts"])

    def concatenate_parts(data) -> None:
        for part in parts:
            with open(part, "rb") as f:
                shutil.copyfileobj(f, data, 1 << 22)

    meta = np.array([(r["height"], r["width"], r["source_fps"], r["source_duration"]) for r in kept],
                    dtype=[("height", "<i4"), ("width", "<i4"), ("source_fps", "<f4"), ("source_duration", "<f4")])
    sizes = [size for r in kept for size in r["byte_sizes"]]
    counts = [r["num_frames"] for r in kept]
    arrays = {"byte_offsets": np.cumsum([0, *sizes], dtype=np.int64),
              "video_starts": np.cumsum([0, *counts], dtype=np.int64),
              "video_ids": _ids_array([r["video_id"] for r in kept]), "videos": meta, **captions.arrays(),
              CHECKSUM_ROLE: np.array([crc for r in kept for crc in r["crc32"]], np.uint32)}
    files = {"data": _write_synced(folder / "data.bin", concatenate_parts),
             **{role: _write_synced(folder / f"{role}.npy", functools.partial(np.save, arr=array))
                for role, array in arrays.items()},
             "caption_text": _write_synced(folder / "caption_text.bin", lambda f: f.write(captions.text))}
    shutil.rmtree(folder / "parts")
    rel = {role: f"{task.name}/{path.name}" for role, path in files.items()}
    return {"index": task.index, "name": task.name, "inputs_sha256": task.inputs_sha256, "videos": len(kept),
            "frames": int(sum(counts)), "captions": int(captions.starts[-1]),
            "files": {role: {"path": rel[role], "bytes": path.stat().st_size, "sha256": file_sha256(path)}
                      for role, path in files.items()},
            "skipped": [asdict(s) for r in rows for s in r["skips"]]}


def _inputs_digest(settings: dict, items: tuple[CorpusItem, ...]) -> str:
    """Identifies what a shard was built from, so a rerun with another list or other parameters rebuilds it."""
    # Each item as the format-v1 writer listed it (with its empty feature_path), so that finished shards match.
    payload = json.dumps([settings, [{**asdict(item), "feature_path": None} for item in items]], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass
class BuildReport:
    out_dir: str
    videos_listed: int
    shards_built: int
    shards_reused: int
    videos_written: int = 0
    skipped: list[Skip] = field(default_factory=list)

    def counts(self) -> Counter:
        return Counter(s.kind for s in self.skipped)

    def __str__(self) -> str:
        c = self.counts()
        dropped = sum(c[k] for k in DROPPED_VIDEO_KINDS)
        return (f"{self.shards_built + self.shards_reused} shards ({self.shards_built} built, {self.shards_reused} "
                f"already done) | {self.videos_listed} videos listed, {self.videos_written} written, {dropped} "
                f"skipped ({c['video']} unreadable video, {c['captions']} bad caption file) | {c['caption_row']} caption rows dropped | {c['orphan_captions']} caption files "
                f"without video | {c['video_list']} bad list lines | details: {self.out_dir}/report.json, "
                f"{self.out_dir}/skipped.csv")

    def write(self) -> None:
        out = Path(self.out_dir)
        c = self.counts()
        write_json_atomic(out / "report.json", {
            "videos_listed": self.videos_listed, "videos_written": self.videos_written,
            "videos_skipped": sum(c[k] for k in DROPPED_VIDEO_KINDS), "skips_by_kind": dict(c),
            "shards_built": self.shards_built, "shards_reused": self.shards_reused,
            "skipped": [asdict(s) for s in self.skipped]})
        with open(out / "skipped.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["kind", "video_id", "file", "line", "reason"])
            writer.writerows([s.kind, s.video_id, s.file, "" if s.line is None else s.line, s.reason]
                             for s in self.skipped)


def build_video_shards(csv_path: str | Path, video_root: str | Path, out_dir: str | Path, *,
                       caption_root: str | Path | None = None, storage: str = "jpeg", fps: float = 5.0,
                       short_side: int | None = 128, jpeg_quality: int = 90, gop: int = 16,
                       videos_per_shard: int = 4096, workers: int = 1, progress: bool = True,
                       decoder: str = "pyav") -> BuildReport:
    """Decode every listed video once at ``fps`` (short side ``short_side``) into frame shards under ``out_dir``.

    Videos whose caption file is missing or unusable are skipped when ``caption_root`` is given. ``decoder``
    (``data.decoder``: pyav, ffmpeg, decord, torchcodec) reads every video; the decoders select the same frames,
    so it is not part of the shards' identity.
    """
    get_decoder(decoder)   # an unknown name fails here, not once per video
    spec = StorageSpec(storage, float(fps), short_side, jpeg_quality, gop)
    items, list_skips = read_video_list(csv_path, video_root, caption_root)
    if videos_per_shard < 1:
        raise ValueError(f"videos_per_shard must be >= 1, got {videos_per_shard}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # "mode" and "feature_dim" are fields of the format-v1 manifest: kept so that shards already built match.
    settings = {"mode": "video", "storage": asdict(spec), "feature_dim": None, "videos_per_shard": videos_per_shard}
    with open(out / ".build.lock", "w") as lock:
        try:   # two builders in one folder would interleave manifest updates
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"{out}: another shard build is running there") from None
        manifest = _open_manifest(out, settings)
        tasks = []
        for k, first in enumerate(range(0, len(items), videos_per_shard)):
            chunk, name = tuple(items[first:first + videos_per_shard]), f"shard_{k:05d}"
            tasks.append(_ShardTask(k, name, chunk, _inputs_digest(settings, chunk), spec, str(out / f".tmp-{name}")))
        todo = _shards_to_build(out, manifest, tasks, progress)
        manifest["planned_shards"] = len(tasks)
        write_json_atomic(out / MANIFEST_NAME, manifest)
        _run_tasks(out, manifest, todo, workers, progress, decoder)
    entries = manifest["shards"]
    report = BuildReport(str(out), len(items) + sum(s.kind == "video_list" for s in list_skips), len(todo),
                         len(tasks) - len(todo), sum(e["videos"] for e in entries),
                         list_skips + [Skip(**s) for e in entries for s in e["skipped"]])
    report.write()
    return report


def _open_manifest(out: Path, settings: dict) -> dict:
    """The existing manifest (parameters must match) or a new empty one; clears leftovers of killed builds."""
    for leftover in out.glob(".tmp-*"):
        shutil.rmtree(leftover)
    if not (out / MANIFEST_NAME).exists():
        return {"format": FORMAT_NAME, "version": FORMAT_VERSION, **settings, "shards": []}
    manifest = load_manifest(out)
    old = {key: manifest.get(key) for key in settings}
    if old != settings:
        raise ValueError(f"{out}: holds shards built with {old}, not {settings}; use another output folder")
    return manifest


def _shards_to_build(out: Path, manifest: dict, tasks: list[_ShardTask], progress: bool) -> list[_ShardTask]:
    """Tasks whose shard is absent, built from other inputs, or damaged; their stale entries are dropped."""
    done = {e["index"]: e for e in manifest["shards"]}
    todo, keep = [], []
    for task in tasks:
        entry = done.get(task.index)
        problems = verify_shard_entry(out, entry) if entry and entry["inputs_sha256"] == task.inputs_sha256 else None
        if problems == []:
            keep.append(entry)
            if progress:
                print(f"{task.name}: already built and verified, skipping")
        else:
            todo.append(task)
            if problems and progress:
                print(f"{task.name}: rebuilding ({problems[0]})")
    manifest["shards"] = keep
    return todo


def _run_tasks(out: Path, manifest: dict, todo: list[_ShardTask], workers: int, progress: bool, decoder: str) -> None:
    """Encode every item of the shards in ``todo`` (``workers`` processes, one item per task, so even a
    single shard uses every worker); assemble and commit each shard as soon as its last item is back."""
    items = []
    for shard in todo:
        (Path(shard.tmp_dir) / "parts").mkdir(parents=True)
        items += [_ItemTask(shard.index, slot, item, shard.storage, decoder, str(Path(shard.tmp_dir) / "parts" / f"{slot:06d}"))
                  for slot, item in enumerate(shard.items)]
    shards = {shard.index: shard for shard in todo}
    rows: dict[int, list[dict]] = {shard.index: [] for shard in todo}
    pool = mp.get_context().Pool(workers) if workers > 1 and len(items) > 1 else None
    try:
        results = pool.imap_unordered(_process_item, items) if pool else map(_process_item, items)
        for row in progress_bar(results, total=len(items), desc="shards", unit="video", disable=not progress):
            done = rows[row["shard"]]
            done.append(row)
            shard = shards[row["shard"]]
            if len(done) == len(shard.items):
                _commit(out, manifest, shard, _assemble_shard(shard, sorted(done, key=lambda r: r["slot"])))
                del rows[row["shard"]]
    finally:
        if pool:
            pool.terminate()


def _commit(out: Path, manifest: dict, task: _ShardTask, entry: dict) -> None:
    """Move a finished shard into place, then (only then) record it in the manifest."""
    final = out / task.name
    if final.exists():   # left by a build killed between this rename and the manifest update
        shutil.rmtree(final)
    os.replace(Path(task.tmp_dir), final)
    dir_fd = os.open(out, os.O_RDONLY)
    try:   # persist the renames before the manifest can point at them
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    manifest["shards"] = sorted(manifest["shards"] + [entry], key=lambda e: e["index"])
    write_json_atomic(out / MANIFEST_NAME, manifest)
