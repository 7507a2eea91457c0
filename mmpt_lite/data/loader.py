"""Training loader: an exact per-epoch partition of the videos over ranks and workers, resumable.

Epoch plan. For epoch e the video indices are permuted with a generator seeded by (seed, e),
padded by resampling to a multiple of world_size × batch_size (so every rank takes the same number
of steps), and cut into steps × ranks × batch. Rank r consumes row r of each step; the DataLoader
hands whole batches to its workers round-robin, so every video of the epoch is drawn by exactly
one (rank, worker) and none is skipped. An epoch is one clip per video, as in MIL-NCE.

Sample randomness. Each slot of the plan carries its own seed (derived from seed, epoch, step,
rank, slot); the dataset builds a Generator from it and passes it to the aligner. So a sample
depends only on its place in the plan, never on worker scheduling, and a resume from
(epoch, step) redraws exactly what an uninterrupted run would have drawn.
"""

from __future__ import annotations

import atexit
import functools
import math
import multiprocessing
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mmpt_lite.config import DataConfig
from mmpt_lite.data.action_negatives import ActionLexicon, load_lexicon
from mmpt_lite.data.aligners import CropChoice, apply_crop, consecutive_sample, milnce_sample, random_crop
from mmpt_lite.data.batch import ClipBatch, collate


def epoch_plan(num_videos: int, *, epoch: int, seed: int, world_size: int, batch_size: int,
               group: int = 1) -> np.ndarray:
    """Sample indices for one epoch: int64 [steps, world_size, batch_size].

    ``num_videos`` counts samples. With ``group`` > 1 they come in runs of ``group`` (sample
    ``v * group + j`` is clip j of video v) and the runs are shuffled, never split: each batch holds
    ``batch_size / group`` whole videos, ``group`` clips of each side by side.
    """
    if num_videos <= 0:
        raise ValueError("the training corpus has no videos")
    if group < 1 or num_videos % group or batch_size % group:
        raise ValueError(f"group {group} must divide both the sample count {num_videos} and the batch {batch_size}")
    rng = np.random.default_rng([seed, epoch, 0x9E3779B9])
    units = num_videos // group
    order = rng.permutation(units)
    per_step = world_size * batch_size // group
    steps = math.ceil(units / per_step)
    pad = steps * per_step - units
    if pad:  # resample (without replacement when possible) so all ranks take equal steps
        order = np.concatenate([order, rng.choice(units, pad, replace=pad > units)])
    if group > 1:
        order = (order[:, None] * group + np.arange(group)).reshape(-1)
    return order.reshape(steps, world_size, batch_size).astype(np.int64)


def slot_seed(seed: int, epoch: int, step: int, rank: int, slot: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, step, rank, slot]).generate_state(1, np.uint64)[0])


@dataclass
class DataPosition:
    """Where the trainer is in the data: the next batch to consume is (epoch, step)."""

    epoch: int = 0
    step: int = 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step}


class PlanBatchSampler:
    """Yields this rank's batches of (video_index, sample_seed) for one epoch, from ``start_step``.

    With ``seed_group`` = g > 1 the slots come in runs of g (one video's clips, ``epoch_plan(group=g)``) that
    share the seed of the run's first slot, so the run's samples can draw one joint choice (consecutive clips)."""

    def __init__(self, plan: np.ndarray, *, rank: int, epoch: int, seed: int, start_step: int = 0,
                 seed_group: int = 1):
        self.plan, self.rank, self.epoch, self.seed, self.start_step = plan, rank, epoch, seed, start_step
        self.seed_group = seed_group

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        g = self.seed_group
        for step in range(self.start_step, len(self.plan)):
            row = self.plan[step, self.rank]
            yield [(int(v), slot_seed(self.seed, self.epoch, step, self.rank, j - j % g)) for j, v in enumerate(row)]


@dataclass(frozen=True)
class ClipFrames:
    """Which stored frames make one clip and how they are cut.

    indices: int64 [T'] stored-frame indices of the clip's frames in order (repeats allowed; T' = 0 for a video
    without frames); crop: the box (in stored pixels) and flip every frame gets.
    """

    video_id: str
    indices: np.ndarray
    crop: CropChoice


class MilNceClipDataset(Dataset):
    """One MIL-NCE sample per (sample index, seed): uint8 frames and K caption candidates.

    Reads frames from a sharded store (frames at ``store.fps``) and captions from a caption store.
    With ``clips_per_video`` = c, sample ``v * c + j`` is video v's clip from the j-th of c equal runs of
    its captions (so ``len`` = c × videos; ``epoch_plan(..., group=c)`` keeps a video's c clips in one batch).
    With ``clip_order`` "consecutive" it is instead clip j of c consecutive caption-anchored clips in time order
    (``aligners.consecutive_sample``); the loader then gives the c samples one seed, so they share a crop.
    Returns {"video": uint8 [T, S, S, 3], "text": {name: int64 [K, L]}, "video_index": int64}.
    With an ``action_lexicon`` and ``num_negatives`` = M > 0 a sample also has "negative_text"
    {name: int64 [M, L]}: its candidates with the action phrase rewritten as actions none of them names,
    taken from the rest of the video's narration (``negatives_from_video``) or from the whole lexicon (:mod:`mmpt_lite.data.action_negatives`), and
    "negative_mask" bool [M] (False where no candidate names an action; that row is padding).
    """

    def __init__(self, video_store, caption_store, tokenize: Callable[[list[str]], dict[str, torch.Tensor]], *,
                 num_frames: int, fps: float, video_size: int, num_candidates: int, min_time: float,
                 random_flip: bool = True, clips_per_video: int = 1, clip_order: str = "spread", action_lexicon: ActionLexicon | None = None, num_negatives: int = 0,
                 negatives_from_video: bool = True):
        if num_negatives and action_lexicon is None:
            raise ValueError("action-swapped negatives need an action_lexicon")
        self.videos, self.captions, self.tokenize = video_store, caption_store, tokenize
        self.video_ids = list(video_store.video_ids)
        self.num_frames, self.fps, self.size = num_frames, fps, video_size
        self.num_candidates, self.min_time, self.random_flip = num_candidates, min_time, random_flip
        if clip_order not in ("spread", "consecutive"):
            raise ValueError(f"clip_order {clip_order!r}: valid are spread, consecutive")
        self.clips_per_video, self.clip_order = clips_per_video, clip_order
        self.action_lexicon, self.num_negatives = action_lexicon, num_negatives
        self.negatives_from_video = negatives_from_video
        self._video_actions: dict[str, frozenset[str]] = {}  # actions each video's narration names (cache)

    @classmethod
    def from_config(cls, data: DataConfig, video_store, caption_store,
                    tokenize: Callable[[list[str]], dict[str, torch.Tensor]]) -> MilNceClipDataset:
        """The dataset the run's ``data`` section describes. With ``data.action_negatives.count`` the lexicon
        is read here; a bad one is a ConfigError naming ``data.action_negatives.lexicon``."""
        negatives = data.action_negatives
        return cls(video_store, caption_store, tokenize, num_frames=data.num_frames, fps=data.fps,
                   video_size=data.video_size, num_candidates=data.num_candidates, min_time=data.min_time,
                   random_flip=data.random_flip, clips_per_video=data.clips_per_video, clip_order=data.clip_order,
                   action_lexicon=load_lexicon(data) if negatives.count else None,
                   num_negatives=negatives.count, negatives_from_video=negatives.pool == "video")

    def __len__(self) -> int:
        return len(self.video_ids) * self.clips_per_video

    def frame_indices(self, clip_start: float, total: int) -> np.ndarray:
        """Stored-frame indices for ``num_frames`` samples at ``fps`` from ``clip_start`` (int64 [T])."""
        times = clip_start + np.arange(self.num_frames) / self.fps
        return np.minimum(np.floor(times * self.videos.fps + 1e-6).astype(np.int64), max(0, total - 1))

    def plan_sample(self, item: tuple[int, int]) -> tuple[dict, ClipFrames]:
        """Everything of a sample but its pixels: the sample dict without "video", and which stored frames and
        crop make its clip. All randomness is drawn here from the sample's seed, in one fixed order (clip and
        captions, crop and flip, negatives), so any reader of the frames (``read_clip`` here, the DALI loader in
        :mod:`mmpt_lite.data.dali`) gives the same sample."""
        sample, seed = item
        index, part = divmod(sample, self.clips_per_video)
        rng = np.random.default_rng(seed)
        vid = self.video_ids[index]
        starts, ends, texts = self.captions.get(vid)
        total = self.videos.num_frames(vid)
        duration = total / self.videos.fps
        sample_clip = consecutive_sample if self.clip_order == "consecutive" else milnce_sample
        choice = sample_clip(starts, ends, rng, num_candidates=self.num_candidates, min_time=self.min_time,
                               clip_seconds=self.num_frames / self.fps, duration=duration, part=part,
                               parts=self.clips_per_video)
        idx = self.frame_indices(choice.clip_start, total) if total else np.zeros(0, np.int64)
        height, width = self.videos.frame_size(vid)
        crop = random_crop(height, width, self.size, rng, flip=self.random_flip)
        frames = ClipFrames(vid, idx, crop)
        captions = [texts[i] for i in choice.caption_ids]
        if self.num_negatives:
            pool = None
            if self.negatives_from_video:
                if vid not in self._video_actions:
                    self._video_actions[vid] = self.action_lexicon.actions_in(texts)
                pool = self._video_actions[vid]
            negatives = self.action_lexicon.negatives(captions, rng, self.num_negatives, pool=pool)
            text = self.tokenize(captions + [n if n is not None else captions[0] for n in negatives])
            k = len(captions)
            return {"text": {name: v[:k] for name, v in text.items()}, "video_index": torch.tensor(index),
                    "negative_text": {name: v[k:] for name, v in text.items()},
                    "negative_mask": torch.tensor([n is not None for n in negatives])}, frames
        return {"text": self.tokenize(captions), "video_index": torch.tensor(index)}, frames

    def read_clip(self, frames: ClipFrames) -> np.ndarray:
        """The planned clip, uint8 [T, S, S, 3]: stored frames decoded, cropped, flipped; zeros where the
        video or the frame is short of T frames or S pixels."""
        clip = np.zeros((self.num_frames, self.size, self.size, 3), np.uint8)
        idx = frames.indices
        if not len(idx):
            return clip
        first = int(idx[0])
        decoded = self.videos.read_frames(frames.video_id, first, int(idx[-1]) - first + 1)
        if not len(decoded):
            return clip
        cropped = apply_crop(decoded[np.minimum(idx - first, len(decoded) - 1)], frames.crop)
        clip[:len(cropped), :cropped.shape[1], :cropped.shape[2]] = cropped
        return clip

    def __getitem__(self, item: tuple[int, int]) -> dict:
        sample, frames = self.plan_sample(item)
        sample["video"] = torch.from_numpy(self.read_clip(frames))
        return sample


class TrainLoader:
    """Endless iterator over epochs of this rank's batches; ``position`` is what to checkpoint.

    ``position`` always names the next batch the trainer will receive, so saving it after a step
    and restoring it with ``load_state_dict`` neither repeats nor drops a batch.
    """

    def __init__(self, dataset: Dataset, *, batch_size: int, rank: int, world_size: int, seed: int,
                 num_workers: int = 0, pin_memory: bool = False,
                 plan_provider: Callable[[int], np.ndarray | None] | None = None,
                 collate_fn: Callable[[list], object] = collate):
        self.dataset, self.batch_size, self.rank, self.world_size = dataset, batch_size, rank, world_size
        # How a list of samples becomes what __iter__ yields: a ClipBatch, or for a loader that decodes after
        # the workers (mmpt_lite.data.dali) its undecoded form. A module-level function (workers pickle it).
        self.collate_fn = collate_fn
        self.seed, self.num_workers, self.pin_memory = seed, num_workers, pin_memory
        # plan_provider(epoch) -> int64 [steps, world, batch] or None (= the shuffled epoch_plan). It is
        # called on every rank at the start of each epoch (e.g. to mine hard-negative batches with the
        # current model) and must return the same plan everywhere. Such a plan is checkpointed, so a
        # resume mid-epoch continues it instead of re-mining with different weights.
        self.plan_provider = plan_provider
        self.custom_plan: np.ndarray | None = None  # the current epoch's provided plan, if any
        self._resumed_plan = False  # True right after load_state_dict restored a provided plan
        self.position = DataPosition()
        # A dataset with several clips per video keeps each video's clips in one batch.
        self.group = getattr(dataset, "clips_per_video", 1)
        # Consecutive clips are one joint draw per video: its clips get one seed (PlanBatchSampler.seed_group).
        self.seed_group = self.group if getattr(dataset, "clip_order", "spread") == "consecutive" else 1

    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.dataset) / (self.world_size * self.batch_size))  # group divides both

    def state_dict(self) -> dict:
        state = self.position.state_dict()
        if self.custom_plan is not None:
            state["plan"] = torch.from_numpy(self.custom_plan)
        return state

    def load_state_dict(self, state: dict) -> None:
        self.position = DataPosition(int(state["epoch"]), int(state["step"]))
        plan = state.get("plan")
        self.custom_plan = plan.numpy() if plan is not None else None
        self._resumed_plan = self.custom_plan is not None

    def _plan_for(self, epoch: int) -> np.ndarray:
        if self._resumed_plan:  # continue the checkpointed plan of this epoch
            self._resumed_plan = False
            return self.custom_plan
        self.custom_plan = self.plan_provider(epoch) if self.plan_provider is not None else None
        if self.custom_plan is not None:
            return self.custom_plan
        return epoch_plan(len(self.dataset), epoch=epoch, seed=self.seed, world_size=self.world_size,
                          batch_size=self.batch_size, group=self.group)

    def __iter__(self) -> Iterator[ClipBatch]:
        if self.plan_provider is None:
            yield from self._iter_shuffled()
            return
        while True:  # a provided plan may need the current model: one DataLoader per epoch, made on time
            epoch, start = self.position.epoch, self.position.step
            plan = self._plan_for(epoch)
            if plan.ndim != 3 or plan.shape[1:] != (self.world_size, self.batch_size):
                raise ValueError(f"epoch {epoch}: batch plan has shape {plan.shape}, expected "
                                 f"[steps, {self.world_size}, {self.batch_size}]")
            sampler = PlanBatchSampler(plan, rank=self.rank, epoch=epoch, seed=self.seed, start_step=start,
                                       seed_group=self.seed_group)
            _register_exit_hook()
            loader = DataLoader(self.dataset, batch_sampler=sampler, num_workers=self.num_workers,
                                collate_fn=self.collate_fn, pin_memory=self.pin_memory, generator=self._generator(),
                                persistent_workers=False, prefetch_factor=4 if self.num_workers else None,
                                worker_init_fn=_ignore_stop_signals if self.num_workers else None)
            for step, batch in enumerate(loader, start=start):
                self.position = DataPosition(epoch, step + 1)
                yield batch
            self.position = DataPosition(epoch + 1, 0)

    def _generator(self) -> torch.Generator:
        """The DataLoader's own generator: without one, each new iterator draws its workers' base seed from the
        global torch RNG, so a run resumed mid-epoch (a new iterator at another step) would shift the random
        stream of everything else that uses it (dropout, stochastic depth). Samples never use it: their
        randomness comes from the plan's seeds."""
        return torch.Generator().manual_seed(self.seed)

    def _iter_shuffled(self) -> Iterator[ClipBatch]:
        """Shuffled epochs through one DataLoader that spans them, so the workers start once (a small
        corpus has epochs of a few steps; restarting workers each epoch cost more than the steps). The
        sampler runs ahead of the trainer by the prefetch depth, so each batch carries its own
        (epoch, step) and ``position`` advances only as batches are handed out."""
        sampler = _ShuffledEpochsSampler(len(self.dataset), rank=self.rank, world_size=self.world_size,
                                         batch_size=self.batch_size, seed=self.seed, start=self.position,
                                         group=self.group, seed_group=self.seed_group)
        _register_exit_hook()
        loader = DataLoader(_PositionTagged(self.dataset), batch_sampler=sampler, num_workers=self.num_workers,
                            collate_fn=functools.partial(_collate_tagged, self.collate_fn), pin_memory=self.pin_memory,
                            generator=self._generator(), prefetch_factor=4 if self.num_workers else None,
                            worker_init_fn=_ignore_stop_signals if self.num_workers else None)
        for batch, (epoch, step) in loader:
            self.position = DataPosition(epoch, step + 1)  # as the per-epoch path: (e, steps) == (e + 1, 0)
            yield batch


def _ignore_stop_signals(_worker_id: int) -> None:
    """Loader workers leave SIGTERM / SIGUSR1 to their rank. A scheduler signals every process of a job; a
    worker that died of it would make the rank fail before it could write its preemption checkpoint. The
    rank ends its workers itself, and they exit on their own when the rank dies (torch's parent check)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def _kill_leftover_workers() -> None:
    """At interpreter exit, before multiprocessing's own exit hook: that hook ends daemonic children with
    SIGTERM, which these workers ignore, and then waits for them forever. Workers still alive here belong to
    an iterator that was never closed (e.g. one kept by an exception's traceback); SIGKILL is what ends them."""
    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()


_exit_hook_registered = False


def _register_exit_hook() -> None:
    # Registered after multiprocessing's hook (imported with torch), so it runs before it (atexit is LIFO).
    global _exit_hook_registered
    if not _exit_hook_registered:
        atexit.register(_kill_leftover_workers)
        _exit_hook_registered = True


class _ShuffledEpochsSampler:
    """Endless batches of (video_index, sample_seed, epoch, step) over successive ``epoch_plan``s."""

    def __init__(self, num_videos: int, *, rank: int, world_size: int, batch_size: int, seed: int,
                 start: DataPosition, group: int = 1, seed_group: int = 1):
        self.num_videos, self.rank, self.world_size, self.batch_size = num_videos, rank, world_size, batch_size
        self.seed, self.start, self.group, self.seed_group = seed, start, group, seed_group

    def __iter__(self) -> Iterator[list[tuple[int, int, int, int]]]:
        epoch, first = self.start.epoch, self.start.step
        while True:
            plan = epoch_plan(self.num_videos, epoch=epoch, seed=self.seed, world_size=self.world_size,
                              batch_size=self.batch_size, group=self.group)
            batches = PlanBatchSampler(plan, rank=self.rank, epoch=epoch, seed=self.seed, start_step=first,
                                       seed_group=self.seed_group)
            for step, batch in enumerate(batches, start=first):
                yield [(index, seed, epoch, step) for index, seed in batch]
            epoch, first = epoch + 1, 0


class _PositionTagged(Dataset):
    """Wraps a (video_index, seed) dataset so each sample comes back with its plan position."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int, int, int]) -> tuple[dict, tuple[int, int]]:
        index, seed, epoch, step = item
        return self.dataset[(index, seed)], (epoch, step)


def _collate_tagged(collate_fn: Callable[[list], object],
                    samples: list[tuple[dict, tuple[int, int]]]) -> tuple[object, tuple[int, int]]:
    return collate_fn([sample for sample, _ in samples]), samples[0][1]
