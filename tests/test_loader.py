"""Loader: exact epoch partition over (rank, worker), padding by resampling, exact resume."""

import numpy as np
import pytest
import torch

from mmpt_lite.data.batch import ClipBatch, collate
from mmpt_lite.data.loader import MilNceClipDataset, TrainLoader, epoch_plan


class ArrayVideoStore:
    """Frames held in memory with the sharded store's interface; frame value encodes (video, frame)."""

    def __init__(self, num_videos: int, frames: int = 40, fps: float = 5.0, size: int = 12):
        self.video_ids = [f"v{i:03d}" for i in range(num_videos)]
        self.fps, self.frames, self.size = fps, frames, size

    def num_frames(self, vid):
        return self.frames

    def frame_size(self, vid):
        return self.size, self.size

    def read_frames(self, vid, start, count):
        v = int(vid[1:])
        stop = min(self.frames, start + count)
        out = np.zeros((max(0, stop - start), self.size, self.size, 3), np.uint8)
        out[..., 0] = v
        out[..., 1] = np.arange(start, stop)[:, None, None]
        return out


class ArrayCaptionStore:
    def get(self, vid):
        starts = np.arange(0.0, 8.0, 1.0, dtype=np.float32)
        return starts, starts + 0.8, [f"{vid} caption {i}" for i in range(8)]


def tokenize(texts):
    return {"input_ids": torch.tensor([[int(t[1:4]), int(t.split()[-1]) + 1] for t in texts])}


def make_dataset(n):
    return MilNceClipDataset(ArrayVideoStore(n), ArrayCaptionStore(), tokenize, num_frames=4, fps=5.0,
                             video_size=8, num_candidates=3, min_time=2.0)


@pytest.mark.parametrize("n,world,batch", [(10, 2, 3), (12, 2, 3), (7, 4, 4), (1, 2, 2), (33, 3, 5)])
def test_epoch_plan_partitions_then_pads(n, world, batch):
    plan = epoch_plan(n, epoch=3, seed=1, world_size=world, batch_size=batch)
    steps = plan.shape[0]
    assert plan.shape == (steps, world, batch) and steps == -(-n // (world * batch))
    flat = plan.reshape(-1)
    assert set(flat.tolist()) == set(range(n)), "every video is drawn in every epoch"
    assert len(flat) - n < world * batch, "padding is less than one global step"
    first_pass = flat[:n]
    assert sorted(first_pass.tolist()) == list(range(n)), "the unpadded part is a permutation"
    assert not np.array_equal(plan, epoch_plan(n, epoch=4, seed=1, world_size=world, batch_size=batch)) or n == 1


def test_epoch_plan_empty_corpus():
    with pytest.raises(ValueError, match="no videos"):
        epoch_plan(0, epoch=0, seed=0, world_size=1, batch_size=2)


@pytest.mark.parametrize("n,world,batch,group", [(12, 2, 4, 2), (10, 1, 6, 3), (4, 2, 4, 4)])
def test_epoch_plan_groups_keep_a_videos_clips_in_one_batch(n, world, batch, group):
    plan = epoch_plan(n * group, epoch=1, seed=2, world_size=world, batch_size=batch, group=group)
    runs = plan.reshape(-1, group)
    assert (runs % group == np.arange(group)).all() and (runs // group == runs[:, :1] // group).all()
    assert set(plan.reshape(-1).tolist()) == set(range(n * group)), "every clip of every video each epoch"
    assert plan.shape[1:] == (world, batch) and plan.shape[0] == -(-n // (world * batch // group))
    ungrouped = epoch_plan(n, epoch=1, seed=2, world_size=world, batch_size=batch)
    assert np.array_equal(ungrouped, epoch_plan(n, epoch=1, seed=2, world_size=world, batch_size=batch, group=1))
    with pytest.raises(ValueError, match="group 5"):
        epoch_plan(n * group, epoch=1, seed=2, world_size=world, batch_size=batch, group=5)


def test_clips_per_video_batches_hold_different_moments_of_each_video():
    """Two clips per video: a batch holds both, one anchored in each half of the captions."""
    dataset = MilNceClipDataset(ArrayVideoStore(6), ArrayCaptionStore(), tokenize, num_frames=4, fps=5.0,
                                video_size=8, num_candidates=1, min_time=0.5, clips_per_video=2)
    loader = TrainLoader(dataset, batch_size=4, rank=0, world_size=1, seed=3)
    assert len(dataset) == 12 and loader.steps_per_epoch() == 3
    for _, batch in zip(range(6), loader, strict=False):
        videos = batch.video_index.tolist()
        assert videos[0] == videos[1] and videos[2] == videos[3] and videos[0] != videos[2]
        caption = batch.text["input_ids"][:, 0, 1] - 1  # the single candidate = the anchor caption
        assert (caption[0::2] < 4).all() and (caption[1::2] >= 4).all(), caption


def test_action_negatives_ride_with_their_clip():
    from mmpt_lite.data.action_negatives import ActionLexicon

    lexicon = ActionLexicon({"cut": ["chop the {}"], "stir": ["stir the {}"], "pour": ["pour the {}"]})

    class KitchenCaptions:
        def get(self, vid):
            starts = np.arange(0.0, 8.0, 1.0, dtype=np.float32)
            said = [f"chop the onion {i}" if int(vid[1:]) % 2 == 0 else f"okay {i}" for i in range(8)]
            return starts, starts + 0.8, said

    verbs = {"chop": 1, "stir": 2, "pour": 3}

    def word_ids(texts):  # verb id (0 = none), then the caption number
        return {"input_ids": torch.tensor([[verbs.get(t.split()[0], 0), int(t.split()[-1])] for t in texts])}

    dataset = MilNceClipDataset(ArrayVideoStore(6), KitchenCaptions(), word_ids, num_frames=4, fps=5.0,
                                video_size=8, num_candidates=3, min_time=0.5, action_lexicon=lexicon,
                                num_negatives=2, negatives_from_video=False)
    batch = next(iter(TrainLoader(dataset, batch_size=4, rank=0, world_size=1, seed=1)))
    assert batch.text["input_ids"].shape == (4, 3, 2)
    negative, mask = batch.negative_text["input_ids"], batch.negative_mask
    assert negative.shape == (4, 2, 2) and mask.shape == (4, 2) and mask.dtype == torch.bool
    for row, video in enumerate(batch.video_index.tolist()):
        if video % 2:  # no candidate names an action: padding rows
            assert not mask[row].any()
            continue
        assert mask[row].all()
        assert sorted(negative[row, :, 0].tolist()) == [2, 3], "the two other actions, not 'chop'"
        assert set(negative[row, :, 1].tolist()) <= set(batch.text["input_ids"][row, :, 1].tolist())
    # From the video's own narration: it names only "chop", so no other action is left for a negative.
    dataset.negatives_from_video = True
    assert not next(iter(TrainLoader(dataset, batch_size=4, rank=0, world_size=1, seed=1))).negative_mask.any()
    with pytest.raises(ValueError, match="need an action_lexicon"):
        MilNceClipDataset(ArrayVideoStore(2), KitchenCaptions(), word_ids, num_frames=4, fps=5.0, video_size=8,
                          num_candidates=3, min_time=0.5, num_negatives=2)


def collect(loader, steps):
    it = iter(loader)
    out = []
    for _ in range(steps):
        b = next(it)
        out.append((b.video_index.tolist(), b.video[:, :, 0, 0, 1].tolist()))
    return out


@pytest.mark.parametrize("num_workers", [0, 2])
def test_ranks_and_workers_partition_each_epoch(num_workers):
    """Two ranks × workers: one epoch's batches cover every video, no (video, slot) drawn twice."""
    n, batch, world = 11, 3, 2
    seen = []
    for rank in range(world):
        loader = TrainLoader(make_dataset(n), batch_size=batch, rank=rank, world_size=world, seed=5,
                             num_workers=num_workers)
        steps = loader.steps_per_epoch()
        for idx, _ in collect(loader, steps):
            seen += idx
        assert loader.position.epoch == 0 and loader.position.step == steps
    assert set(seen) == set(range(n)) and len(seen) == 12  # 11 videos + 1 resampled pad


def test_resume_neither_repeats_nor_drops():
    n = 9
    full = collect(TrainLoader(make_dataset(n), batch_size=2, rank=0, world_size=1, seed=7), 12)
    first = TrainLoader(make_dataset(n), batch_size=2, rank=0, world_size=1, seed=7)
    part1 = collect(first, 7)  # crosses the epoch boundary (5 steps per epoch)
    state = first.state_dict()
    assert state == {"epoch": 1, "step": 2}
    resumed = TrainLoader(make_dataset(n), batch_size=2, rank=0, world_size=1, seed=7, num_workers=2)
    resumed.load_state_dict(state)
    part2 = collect(resumed, 5)
    assert part1 + part2 == full  # same videos and same sampled frames (explicit per-slot seeds)


def test_sample_contents():
    ds = make_dataset(4)
    s = ds[(2, 123)]
    assert s["video"].shape == (4, 8, 8, 3) and s["video"].dtype == torch.uint8
    assert (s["video"][..., 0] == 2).all()
    frames = s["video"][:, 0, 0, 1].tolist()
    assert frames == sorted(frames) and len(set(frames)) == 4  # 4 consecutive frames at the store's fps
    assert s["text"]["input_ids"].shape == (3, 2) and (s["text"]["input_ids"][:, 0] == 2).all()
    again = ds[(2, 123)]
    assert torch.equal(s["video"], again["video"])


def test_plan_provider_is_used_and_checkpointed():
    """A provided (e.g. mined) plan drives the epoch; a resume continues it without asking again."""
    n, calls = 6, []

    def provider(epoch):
        calls.append(epoch)
        return np.array([[[5, 4]], [[3, 2]], [[1, 0]]]) if epoch == 0 else None

    loader = TrainLoader(make_dataset(n), batch_size=2, rank=0, world_size=1, seed=0, plan_provider=provider)
    got = [idx for idx, _ in collect(loader, 2)]
    assert got == [[5, 4], [3, 2]] and calls == [0]
    state = loader.state_dict()
    assert state["plan"].tolist() == [[[5, 4]], [[3, 2]], [[1, 0]]]

    resumed = TrainLoader(make_dataset(n), batch_size=2, rank=0, world_size=1, seed=0, plan_provider=provider)
    resumed.load_state_dict(state)
    rest = [idx for idx, _ in collect(resumed, 2)]
    assert rest[0] == [1, 0] and calls == [0, 1]  # epoch 0 continued from the checkpoint; epoch 1 asked


def test_bad_plan_shape_is_reported():
    loader = TrainLoader(make_dataset(4), batch_size=2, rank=0, world_size=1, seed=0,
                         plan_provider=lambda epoch: np.zeros((2, 2, 2), np.int64))
    with pytest.raises(ValueError, match="batch plan has shape"):
        next(iter(loader))


def test_clip_batch_shapes_and_one_text_tower_pass():
    """collate -> ClipBatch: candidates [B, K, L] then negatives [B, M, L] flatten into one tower input."""
    def sample(i):
        return {"video": torch.full((4, 8, 8, 3), i, dtype=torch.uint8), "video_index": torch.tensor(i),
                "text": {"input_ids": torch.tensor([[10 * i + k] for k in range(3)])},
                "negative_text": {"input_ids": torch.tensor([[100 + 10 * i + m] for m in range(2)])},
                "negative_mask": torch.tensor([True, i == 0])}
    batch = collate([sample(0), sample(1)])
    assert isinstance(batch, ClipBatch) and batch.video.shape == (2, 4, 8, 8, 3) and batch.video_index.tolist() == [0, 1]
    assert batch.text["input_ids"].shape == (2, 3, 1) and batch.negative_mask.tolist() == [[True, True], [True, False]]
    rows = batch.to(torch.device("cpu")).text_tower_input()["input_ids"][:, 0].tolist()
    assert rows == [0, 1, 2, 10, 11, 12, 100, 101, 110, 111]  # row i·K + k, then B·K + i·M + m
    video_only = collate([{"video": s["video"], "video_index": s["video_index"]} for s in (sample(0), sample(1))])
    assert video_only.text is None and video_only.negative_text is None and video_only.negative_mask is None
