"""Video-only training sets for masked pretraining (``mae.dataset``): preparation and the clip dataset.

* ``ssv2`` / ``kinetics``: the training list of ``<data.root>/ssv2`` (``train.json``, videos
  ``videos/<id>.webm``) or ``<data.root>/kinetics`` (``train.txt``, lines ``path label``), the
  embedded synthetic corpus's sets when ``data.synthetic.enabled`` (generated if missing). Frames
  are sharded at the set's native rate (SSv2 12 fps, Kinetics 30 fps) so ``mae.sampling_stride``
  means what it does in VideoMAE (2 for SSv2, 4 for Kinetics); the shards are built on first use
  for the synthetic corpus, and a real corpus gets the command that builds them.
* ``shards``: the frames of the MIL-NCE corpus (``data.shard_root``, built as for MIL-NCE runs).

Each sample: ``data.num_frames`` frames at the stride from a random start (``mae_frame_indices``),
one multi-scale crop for the whole clip (VideoMAE: no flip), resized to ``data.video_size``;
uint8 ``[T, S, S, 3]``.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from mmpt_lite.config import RunConfig, resolve_path
from mmpt_lite.data.aligners import apply_crop, mae_frame_indices, multiscale_crop
from mmpt_lite.data.classify_sets import read_json_list, split_list_line
from mmpt_lite.data.prepare import PreparedData, ensure_corpus, ensure_corpus_shards, ensure_shards, storage_short_side
from mmpt_lite.data.shards import ShardedVideoStore
from mmpt_lite.data.video import resize_rgb

log = logging.getLogger("mmpt_lite")

SSV2_FPS = 12.0  # Something-Something v2 videos are 12 fps webm

# Frames per second the video-only sets are sharded at: their native rates (most Kinetics videos are 30 fps).
NATIVE_FPS = {"ssv2": SSV2_FPS, "kinetics": 30.0}
TRAIN_LISTS = {"ssv2": "train.json", "kinetics": "train.txt"}


def train_video_paths(set_root: Path, dataset: str) -> list[str]:
    """Training video paths relative to ``set_root`` from the set's own list file, in list order (the shard builder
    skips and reports repeated, missing, unreadable and out-of-root ones); ValueError names a malformed list."""
    list_path = set_root / TRAIN_LISTS[dataset]
    if dataset == "ssv2":
        entries = read_json_list(list_path)
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or "id" not in entry:
                raise ValueError(f"{list_path}: entry {i}: expected an object with an 'id', got {str(entry)[:80]!r}")
        return [f"videos/{entry['id']}.webm" for entry in entries]
    lines = (line.strip() for line in list_path.read_text(errors="replace").splitlines())
    # "path label" (or SlowFast's "path,label"), cut at the last separator as the classification reader does
    return [(split_list_line(line) or (line, ""))[0] for line in lines if line]


def ensure_set_shards(cfg: RunConfig, root: Path, dataset: str, build: bool, *, set_root: Path | None = None,
                      short_side: int = 0, key: str = "mae.dataset") -> Path:
    """Shards of the ``dataset`` training set (``set_root``, default ``root/dataset``) at its native fps, frames
    stored at ``short_side`` (0 = ``storage_short_side(data.video_size)``), under ``root/mae_<dataset>`` unless
    ``data.shard_root`` is set; built here for the synthetic corpus. ``key`` names the setting in errors."""
    set_root = set_root if set_root is not None else root / dataset
    if not (set_root / TRAIN_LISTS[dataset]).is_file():
        if not cfg.data.synthetic.enabled:
            raise FileNotFoundError(f"{key}={dataset}: {set_root / TRAIN_LISTS[dataset]} not found")
        ensure_corpus(cfg, root, build)  # the synthetic corpus holds every set, this one included
    fps, short_side = NATIVE_FPS[dataset], short_side or storage_short_side(cfg.data.video_size)
    shard_root = (resolve_path(cfg.data.shard_root) if cfg.data.shard_root
                  else root / f"mae_{dataset}" / f"shards_fps{fps:g}_s{short_side}")
    if (shard_root / "manifest.json").is_file():
        return shard_root
    if not build:
        raise FileNotFoundError(f"data.shard_root: {shard_root} is not ready (the main rank builds it)")
    video_list = shard_root.with_name(f"{shard_root.name}_videos.csv")  # the shard builder's input format
    video_list.parent.mkdir(parents=True, exist_ok=True)
    with open(video_list, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["video_path"])
        writer.writerows([p] for p in train_video_paths(set_root, dataset))
    return ensure_shards(cfg, video_list, set_root, shard_root, fps=fps, build=build, short_side=short_side)


def prepare_mae_data(cfg: RunConfig, *, build: bool) -> PreparedData:
    """Ensure the video-only training shards of ``mae.dataset`` exist (building what is missing when ``build``);
    the result has no captions and no evaluation set."""
    root = resolve_path(cfg.data.root)
    dataset = cfg.mae.dataset
    if dataset == "shards":  # the MIL-NCE corpus's frames; captions and word vectors are not needed
        shard_root = ensure_corpus_shards(cfg, root, build)
        name = "how2-synth" if cfg.data.synthetic.enabled else root.name
    else:
        shard_root = ensure_set_shards(cfg, root, dataset, build)
        name = f"{'how2-synth' if cfg.data.synthetic.enabled else root.name}/{dataset}"
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, shard_root=str(shard_root)))
    return PreparedData(cfg=cfg, name=name, root=root, shard_root=shard_root, video_store=ShardedVideoStore(shard_root),
                        caption_store=None, msrvtt_csv=None, msrvtt_root=None)


class MaeClipDataset(Dataset):
    """One masked-pretraining clip per (video index, sample seed).

    Returns {"video": uint8 [T, S, S, 3], "video_index": int64} (no text: collate gives ``text`` None).
    """

    def __init__(self, video_store: ShardedVideoStore, *, num_frames: int, stride: int, video_size: int):
        self.videos, self.num_frames, self.stride, self.size = video_store, num_frames, stride, video_size
        self.video_ids = list(video_store.video_ids)

    def __len__(self) -> int:
        return len(self.video_ids)

    def __getitem__(self, item: tuple[int, int]) -> dict:
        index, seed = item
        rng = np.random.default_rng(seed)
        vid = self.video_ids[index]
        idx = mae_frame_indices(self.videos.num_frames(vid), rng, num_frames=self.num_frames, stride=self.stride)
        # Decode only the frames used (a stride-4 clip touches a quarter of its span).
        unique, where = np.unique(idx, return_inverse=True)
        frames = np.stack([self.videos.read_frames(vid, int(i), 1)[0] for i in unique])[where]
        crop = multiscale_crop(frames.shape[1], frames.shape[2], rng, flip=False)
        clip = np.stack([resize_rgb(np.ascontiguousarray(f), self.size, self.size) for f in apply_crop(frames, crop)])
        return {"video": torch.from_numpy(clip), "video_index": torch.tensor(index)}
