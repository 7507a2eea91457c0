"""Classification sets (Kinetics, Something-Something v2): list readers, frame sampling, spatial transforms and
the training clip dataset over the set's frame shards.

* Readers turn the sets' own list files into a :class:`ClassifySet` (paths relative to the set root, int64
  labels, class names); every malformed entry raises ValueError naming ``file:line`` (Kinetics) or the file and
  entry index (SSv2).
* Sampling functions are pure functions of a frame count and an explicit ``numpy.random.Generator``; they
  return int64 frame indices. ``dense_*``: X3D / SlowFast / VideoMAE-Kinetics windows of frames ``stride``
  apart; ``segment_*``: TSN segments (VideoMAE's SSv2 protocol).
* Transforms work on uint8 frames ``[T, H, W, 3]``. SSv2 must never be flipped: its labels name directions
  ("from left to right"), so a flip would change the class.
* :class:`ClassifyClipDataset` maps ``(index, seed)`` to ``{"video", "video_index", "label"}`` like
  ``video_sets.MaeClipDataset``; the shards are those ``video_sets.ensure_set_shards`` builds from the
  training list (shard video id = the file name without extension).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from torch.utils.data import Dataset

from mmpt_lite.data.aligners import apply_crop, mae_frame_indices, multiscale_crop, random_crop
from mmpt_lite.data.shards import ShardedVideoStore
from mmpt_lite.data.video import resize_rgb

DATASETS = ("kinetics", "ssv2")
# Candidate list files per split, the first that exists is read: our lists first, then SlowFast's csv names.
KINETICS_LISTS = {"train": ("train.txt", "train.csv"), "val": ("val.txt", "val.csv", "test.csv")}
SSV2_LISTS = {"train": ("train.json",), "val": ("validation.json",)}


@dataclass
class ClassifySet:
    """One split of a classification set.

    videos: paths relative to ``root``, list order, duplicates removed (the first entry is kept)
    labels: int64 [len(videos)], each in [0, len(classes))
    duplicates: one ``file:line: ...`` message per dropped repeated entry
    """

    name: str
    root: Path
    videos: list[str]
    labels: np.ndarray
    classes: list[str]
    list_path: Path | None = None
    duplicates: list[str] = field(default_factory=list)

    def video_ids(self) -> list[str]:
        """The shard id of each video (file name without extension, as ``howto.read_video_list`` names it)."""
        return [PurePosixPath(v).stem for v in self.videos]


# --------------------------------------------------------------------------- readers
def split_list_line(line: str) -> tuple[str, str] | None:
    """``"path label"`` (or SlowFast's ``"path,label"``) -> (path, label text), cut at the LAST separator so the
    path may hold spaces (or commas); None when there is no separator."""
    line = line.rstrip()
    cut = max(line.rfind(" "), line.rfind(","), line.rfind("\t"))
    if cut <= 0:
        return None
    return line[:cut].strip(), line[cut + 1:].strip()


def relative_video_path(path: str, root: Path, where: str) -> str:
    """``path`` as a normalised path relative to ``root``; ValueError naming ``where`` when it escapes the root
    (a ``..`` above it, or an absolute path outside it)."""
    if os.path.isabs(path):
        base = os.path.normpath(os.path.abspath(root))
        normal = os.path.normpath(path)
        if os.path.commonpath([base, normal]) != base:
            raise ValueError(f"{where}: {path!r} is outside the set root {root}")
        normal = os.path.relpath(normal, base)
    else:
        normal = os.path.normpath(path)
    if normal == ".." or normal.startswith("../") or normal == ".":
        raise ValueError(f"{where}: {path!r} escapes the set root {root}")
    return PurePosixPath(*Path(normal).parts).as_posix()


def read_kinetics_list(list_path: str | Path, root: str | Path | None = None,
                       classes_path: str | Path | None = None) -> ClassifySet:
    """Kinetics list, one ``path label`` per line (label an integer >= 0), paths relative to ``root`` (default:
    the list's folder). Class names from ``classes_path`` (default ``classes.txt`` beside the list, one per
    line) when it exists, else ``"0" .. "K-1"`` with K = largest label + 1."""
    list_path = Path(list_path)
    root = Path(root) if root is not None else list_path.parent
    videos, labels, duplicates, first_line = [], [], [], {}
    # bytes that are not UTF-8 become U+FFFD: that path is then a missing video, named where it is read
    for line_no, line in enumerate(list_path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{list_path}:{line_no}"
        parts = split_list_line(line)
        if parts is None or not parts[0] or not parts[1]:
            raise ValueError(f"{where}: expected 'path label', got {line!r}")
        path, label_text = parts
        try:
            label = int(label_text)
        except ValueError:
            raise ValueError(f"{where}: label {label_text!r} is not an integer") from None
        if label < 0:
            raise ValueError(f"{where}: negative label {label}")
        rel = relative_video_path(path, root, where)
        if rel in first_line:
            duplicates.append(f"{where}: {rel} repeats line {first_line[rel]} (kept the first)")
            continue
        first_line[rel] = line_no
        videos.append(rel)
        labels.append(label)
    if not videos:
        raise ValueError(f"{list_path}: empty list (no 'path label' lines)")
    classes_path = Path(classes_path) if classes_path is not None else list_path.parent / "classes.txt"
    if classes_path.is_file():
        classes = [c.strip() for c in classes_path.read_text().splitlines() if c.strip()]
        for rel, label in zip(videos, labels, strict=True):
            if label >= len(classes):
                raise ValueError(f"{list_path}:{first_line[rel]}: label {label} but {classes_path} names "
                                 f"{len(classes)} classes")
    else:
        classes = [str(k) for k in range(max(labels) + 1)]
    return ClassifySet("kinetics", root, videos, np.array(labels, np.int64), classes, list_path, duplicates)


def read_ssv2_list(list_path: str | Path, labels_path: str | Path | None = None,
                   root: str | Path | None = None) -> ClassifySet:
    """SSv2 ``train.json`` / ``validation.json`` (a list of {id, label, template, placeholders}) with
    ``labels.json`` (template without brackets -> class index as a string). Video ``videos/<id>.webm``."""
    list_path = Path(list_path)
    root = Path(root) if root is not None else list_path.parent
    labels_path = Path(labels_path) if labels_path is not None else list_path.parent / "labels.json"
    try:
        table = {name: int(index) for name, index in json.loads(labels_path.read_bytes()).items()}
    except (ValueError, AttributeError, TypeError) as exc:
        raise ValueError(f"{labels_path}: expected {{template: index}} ({exc})") from None
    classes = [""] * len(table)
    for name, index in table.items():
        if not 0 <= index < len(table) or classes[index]:
            raise ValueError(f"{labels_path}: indices must be 0..{len(table) - 1}, each once (got {index} for {name!r})")
        classes[index] = name
    entries = read_json_list(list_path)
    if not entries:
        raise ValueError(f"{list_path}: expected a non-empty list of entries")
    videos, labels, duplicates, first = [], [], [], {}
    for i, entry in enumerate(entries):
        where = f"{list_path}: entry {i}"
        if not isinstance(entry, dict) or "id" not in entry or "template" not in entry:
            raise ValueError(f"{where}: expected an object with 'id' and 'template', got {str(entry)[:80]!r}")
        template = str(entry["template"]).replace("[", "").replace("]", "")
        if template not in table:
            raise ValueError(f"{where}: template {template!r} is not in {labels_path}")
        rel = relative_video_path(f"videos/{entry['id']}.webm", root, where)
        if rel in first:
            duplicates.append(f"{where}: id {entry['id']} repeats entry {first[rel]} (kept the first)")
            continue
        first[rel] = i
        videos.append(rel)
        labels.append(table[template])
    return ClassifySet("ssv2", root, videos, np.array(labels, np.int64), classes, list_path, duplicates)


def read_json_list(path: Path) -> list:
    """A JSON file holding a list (SSv2's train/validation files); ValueError naming the file otherwise."""
    try:
        entries = json.loads(path.read_bytes())
    except ValueError as exc:   # not JSON, or not UTF-8
        raise ValueError(f"{path}: not a JSON list ({exc})") from None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of entries, got {type(entries).__name__}")
    return entries


def default_list_path(set_root: str | Path, dataset: str, split: str) -> Path:
    """The split's list file in ``set_root``: the first existing candidate (Kinetics: ``<split>.txt``, then
    SlowFast's ``.csv`` names); the first candidate when none exists (the reader then names it)."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown classification set {dataset!r}; choose one of {DATASETS}")
    candidates = (KINETICS_LISTS if dataset == "kinetics" else SSV2_LISTS).get(split)
    if candidates is None:
        raise ValueError(f"unknown split {split!r}; choose 'train' or 'val'")
    set_root = Path(set_root)
    return next((set_root / c for c in candidates if (set_root / c).is_file()), set_root / candidates[0])


def read_classify_set(set_root: str | Path, dataset: str, split: str = "val",
                      list_path: str | Path | None = None) -> ClassifySet:
    """Read ``split`` ("train" / "val") of ``dataset`` ("kinetics" / "ssv2") under ``set_root``; an explicit
    ``list_path`` replaces the default list file (paths stay relative to ``set_root``)."""
    path = Path(list_path) if list_path is not None else default_list_path(set_root, dataset, split)
    if not path.is_file():
        raise FileNotFoundError(f"{dataset} {split} list not found: {path}")
    if dataset == "kinetics":
        return read_kinetics_list(path, set_root, Path(set_root) / "classes.txt")
    return read_ssv2_list(path, Path(set_root) / "labels.json", set_root)


# --------------------------------------------------------------------------- frame sampling
def dense_indices(total: int, rng: np.random.Generator, num_frames: int, stride: int) -> np.ndarray:
    """Training window: ``num_frames`` frames ``stride`` apart from a uniformly random start (X3D / SlowFast /
    VideoMAE Kinetics); short videos repeat their last frame. int64 [num_frames]."""
    return mae_frame_indices(total, rng, num_frames=num_frames, stride=stride)


def dense_test_indices(total: int, num_frames: int, stride: int, num_clips: int) -> np.ndarray:
    """Test windows spread uniformly over the video, int64 [num_clips, num_frames].

    SlowFast's rule: with span = (num_frames - 1)·stride + 1 and delta = max(total - span, 0), clip i starts at
    round(delta·i / (num_clips - 1)) (one clip: the centre, delta / 2). Indices past the end are clipped.
    """
    span = (num_frames - 1) * stride + 1
    delta = max(total - span, 0)
    if num_clips == 1:
        starts = np.array([delta / 2])
    else:
        starts = delta * np.arange(num_clips) / (num_clips - 1)
    idx = np.round(starts)[:, None].astype(np.int64) + stride * np.arange(num_frames)[None]
    return np.clip(idx, 0, max(total - 1, 0)).astype(np.int64)


def _segment_bounds(total: int, num_segments: int) -> tuple[np.ndarray, np.ndarray]:
    edges = np.floor(np.arange(num_segments + 1) * total / num_segments).astype(np.int64)
    return edges[:-1], edges[1:]


def segment_indices(total: int, rng: np.random.Generator, num_segments: int) -> np.ndarray:
    """TSN training sampling: the video cut into ``num_segments`` equal segments [floor(i·T/n), floor((i+1)·T/n)),
    one uniformly random frame from each. Videos shorter than ``num_segments`` repeat frames (an empty segment
    takes its start, clipped to the last frame). int64 [num_segments]."""
    lo, hi = _segment_bounds(total, num_segments)
    idx = lo + rng.integers(0, np.maximum(hi - lo, 1))
    return np.clip(idx, 0, max(total - 1, 0)).astype(np.int64)


def segment_test_indices(total: int, num_segments: int, num_views: int) -> np.ndarray:
    """TSN test views, int64 [num_views, num_segments]: view v takes frame int(tick·x + tick·(v + 0.5)/num_views)
    of segment x, tick = total / num_segments.

    Why this formula: VideoMAE's SSv2 test reads the segment centres (int(tick/2 + tick·x)) and the segment
    starts (int(tick·x)) as its 2 temporal views; spacing V views evenly inside each segment gives distinct,
    in-range views for any V (V = 1 is the TSN centre frame, V = 2 the quarter and three-quarter points) and they
    differ whenever total >= num_segments·num_views (a frame per view in every segment).
    """
    tick = total / num_segments
    offsets = tick * (np.arange(num_views) + 0.5) / num_views
    idx = np.floor(tick * np.arange(num_segments)[None] + offsets[:, None]).astype(np.int64)
    return np.clip(idx, 0, max(total - 1, 0))


# --------------------------------------------------------------------------- spatial transforms
def short_side_size(height: int, width: int, side: int) -> tuple[int, int]:
    """(height, width) with the short side ``side`` and the aspect kept (long side rounded)."""
    if height <= width:
        return side, max(side, round(width * side / height))
    return max(side, round(height * side / width)), side


def resize_short_side(frames: np.ndarray, side: int) -> np.ndarray:
    """uint8 [T, H, W, 3] -> [T, H', W', 3] with min(H', W') = ``side``."""
    height, width = short_side_size(frames.shape[1], frames.shape[2], side)
    if (height, width) == frames.shape[1:3]:
        return frames
    return np.stack([resize_rgb(np.ascontiguousarray(f), width, height) for f in frames])


def _resize_square(frames: np.ndarray, size: int) -> np.ndarray:
    return np.stack([resize_rgb(np.ascontiguousarray(f), size, size) for f in frames])


def multiscale_resize(frames: np.ndarray, rng: np.random.Generator, size: int, *, flip: bool) -> np.ndarray:
    """VideoMAE training crop: one multi-scale crop for the whole clip (``aligners.multiscale_crop``), resized to
    ``size``²; ``flip`` allows a coin-flip horizontal flip (never for SSv2). uint8 [T, size, size, 3]."""
    crop = multiscale_crop(frames.shape[1], frames.shape[2], rng, flip=flip)
    return _resize_square(apply_crop(frames, crop), size)


def short_side_jitter(frames: np.ndarray, rng: np.random.Generator, size: int, *, min_scale: int, max_scale: int,
                      flip: bool) -> np.ndarray:
    """SlowFast / X3D training crop: short side resized to a random integer in [min_scale, max_scale], then a random
    ``size``² crop and (``flip``) a coin-flip horizontal flip. uint8 [T, size, size, 3]."""
    if not size <= min_scale <= max_scale:
        raise ValueError(f"short-side jitter needs size <= min_scale <= max_scale, got {size}, {min_scale}, {max_scale}")
    scaled = resize_short_side(frames, int(rng.integers(min_scale, max_scale + 1)))
    crop = random_crop(scaled.shape[1], scaled.shape[2], size, rng, flip=flip)
    return np.ascontiguousarray(apply_crop(scaled, crop))


def uniform_crops(frames: np.ndarray, test_size: int, num_crops: int) -> np.ndarray:
    """Test-time crops: short side resized to ``test_size`` (skipped when it already is), then ``num_crops``
    test_size² crops evenly spread along the long side: 3 = SlowFast's uniform_crop (left / centre / right, or
    top / centre / bottom for portrait video), 1 = the centre. uint8 [num_crops, T, S, S, 3]."""
    frames = resize_short_side(frames, test_size)
    height, width = frames.shape[1:3]
    room = max(height, width) - test_size
    offsets = [room // 2] if num_crops == 1 else np.round(np.linspace(0, room, num_crops)).astype(int).tolist()
    if height > width:  # portrait: crops go down the frame
        return np.stack([frames[:, o:o + test_size, :test_size] for o in offsets])
    return np.stack([frames[:, :test_size, o:o + test_size] for o in offsets])


# --------------------------------------------------------------------------- training dataset
def skipped_video_ids(store: ShardedVideoStore) -> dict[str, str]:
    """Videos the shard builder skipped as unreadable: id -> reason (from the manifest's shard entries)."""
    return {s["video_id"]: s["reason"] for entry in store.manifest["shards"] for s in entry.get("skipped", [])
            if s["kind"] == "video"}


class ClassifyClipDataset(Dataset):
    """One labelled training clip per (list position, sample seed).

    Args:
        video_store: frame shards of the set's training videos (``video_sets.ensure_set_shards``).
        classify_set: the training list (:func:`read_classify_set`); each listed video must be in the shards or
            among the ones the builder skipped as unreadable (those are left out and listed in ``skipped``).
        sampling: "dense" (``num_frames`` frames ``stride`` apart) or "segments" (TSN: ``num_frames`` segments).
        spatial: "multiscale" (VideoMAE) or "jitter" / "short_side_jitter" (SlowFast / X3D, short side in ``jitter``).
        flip: allow horizontal flips (must be False for SSv2).
    Item ``(index, seed)`` -> {"video": uint8 [T, size, size, 3], "video_index": int64, "label": int64}.
    """

    def __init__(self, video_store: ShardedVideoStore, classify_set: ClassifySet, *, sampling: str = "dense",
                 num_frames: int = 16, stride: int = 4, size: int = 224, spatial: str = "multiscale",
                 flip: bool = True, jitter: Sequence[int] = (256, 320)):
        if sampling not in ("dense", "segments"):
            raise ValueError(f"sampling must be 'dense' or 'segments', got {sampling!r}")
        if spatial not in ("multiscale", "jitter", "short_side_jitter"):  # classify.spatial says "jitter"
            raise ValueError(f"spatial must be 'multiscale' or 'jitter' (short-side jitter), got {spatial!r}")
        if flip and classify_set.name == "ssv2":
            raise ValueError("ssv2 must not be flipped: its labels name directions (left/right)")
        self.videos, self.sampling, self.spatial, self.flip = video_store, sampling, spatial, flip
        self.num_frames, self.stride, self.size, self.jitter = num_frames, stride, size, tuple(jitter)
        stored = set(video_store.video_ids)
        skipped = skipped_video_ids(video_store)
        self.video_ids, labels, self.skipped, missing, seen = [], [], {}, [], {}
        for rel, vid, label in zip(classify_set.videos, classify_set.video_ids(), classify_set.labels, strict=True):
            if vid in seen:  # the shard builder keeps one video per id (file name): the first listed
                self.skipped[rel] = f"same video id {vid!r} as {seen[vid]!r} (shards keep the first)"
            elif vid in stored:
                seen[vid] = rel
                self.video_ids.append(vid)
                labels.append(label)
            elif vid in skipped:
                self.skipped[rel] = skipped[vid]
            else:
                missing.append(rel)
        if missing:
            raise ValueError(f"{len(missing)} video(s) of {classify_set.list_path} are not in the shards under "
                             f"{video_store.root}, first {missing[0]!r} (shards built from another list?)")
        if not self.video_ids:
            raise ValueError(f"no video of {classify_set.list_path} is in the shards under {video_store.root}")
        self.labels = np.array(labels, np.int64)

    def __len__(self) -> int:
        return len(self.video_ids)

    def frame_indices(self, total: int, rng: np.random.Generator) -> np.ndarray:
        if self.sampling == "dense":
            return dense_indices(total, rng, self.num_frames, self.stride)
        return segment_indices(total, rng, self.num_frames)

    def __getitem__(self, item: tuple[int, int]) -> dict:
        index, seed = item
        rng = np.random.default_rng(seed)
        vid = self.video_ids[index]
        idx = self.frame_indices(self.videos.num_frames(vid), rng)
        unique, where = np.unique(idx, return_inverse=True)  # decode each used frame once
        frames = np.stack([self.videos.read_frames(vid, int(i), 1)[0] for i in unique])[where]
        if self.spatial == "multiscale":
            clip = multiscale_resize(frames, rng, self.size, flip=self.flip)
        else:
            clip = short_side_jitter(frames, rng, self.size, min_scale=self.jitter[0], max_scale=self.jitter[1],
                                     flip=self.flip)
        return {"video": torch.from_numpy(np.ascontiguousarray(clip)), "video_index": torch.tensor(index),
                "label": torch.tensor(int(self.labels[index]))}
