"""Retrieval-augmented batches: faiss index, batch plans, the loader's plan provider (1 and 2 ranks)."""

from __future__ import annotations

import json
import logging
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mmpt_lite.config import config_from_dict
from mmpt_lite.data.loader import TrainLoader, epoch_plan
from mmpt_lite.retrieval.index import NeighbourIndex
from mmpt_lite.retrieval.mining import RetrievalPlanProvider, plan_rng, shard_range
from mmpt_lite.retrieval.plan import build_mined_plan, mean_batch_similarity


def clustered(num: int, dim: int = 32, clusters: int = 20, noise: float = 0.6, seed: int = 0) -> np.ndarray:
    """Unit vectors around ``clusters`` random centres: float32 [num, dim]."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, num)] + noise * rng.standard_normal((num, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# ----------------------------------------------------------------------------- index
def test_ivf_recall_against_flat():
    x = clustered(4000)
    queries = x[:200]
    flat = NeighbourIndex(x, kind="flat")
    _, truth = flat.search(queries, 10)
    ivf = NeighbourIndex(x, kind="ivfflat", nlist=32, nprobe=4)
    _, approx = ivf.search(queries, 10)
    recall = np.mean([len(set(a) & set(t)) / 10 for a, t in zip(approx, truth, strict=True)])
    assert recall >= 0.9
    _, exact = ivf.search(queries, 10, nprobe=32)  # every list scanned: exact
    assert ivf.is_exact(32) and not ivf.is_exact()
    assert np.array_equal(np.sort(exact, axis=1), np.sort(truth, axis=1))


def test_search_restricted_to_allowed_subset():
    x = clustered(1000)
    allowed = np.zeros(len(x), dtype=bool)
    allowed[::3] = True
    for index, nprobe in ((NeighbourIndex(x, kind="flat"), None), (NeighbourIndex(x, kind="ivfflat", nlist=8), 2),
                          (NeighbourIndex(x, kind="ivfflat", nlist=8), 8)):
        _, ids = index.search(x[:50], 20, allowed=allowed, nprobe=nprobe)
        found = ids[ids >= 0]
        assert len(found) and allowed[found].all()
    _, ids = NeighbourIndex(x[:5], kind="flat").search(x[:1], 10, allowed=np.array([1, 1, 0, 0, 0], bool))
    assert sorted(ids[0][:2]) == [0, 1] and (ids[0][2:] == -1).all()


def test_fewer_vectors_than_nlist_falls_back_to_flat(caplog):
    x = clustered(100)
    with caplog.at_level(logging.WARNING, logger="mmpt_lite"):
        index = NeighbourIndex(x, kind="ivfflat", nlist=512, nprobe=1)
    assert index.kind == "flat" and index.is_exact()
    assert "fewer than nlist=512" in index.fallback_reason
    assert any("Flat index instead" in r.getMessage() for r in caplog.records)
    _, ids = index.search(x[:3], 1)
    assert list(ids[:, 0]) == [0, 1, 2]


def test_index_rejects_empty_and_non_finite():
    with pytest.raises(ValueError, match="non-empty"):
        NeighbourIndex(np.zeros((0, 8), np.float32))
    bad = clustered(10)
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        NeighbourIndex(bad)


# ----------------------------------------------------------------------------- plan
@pytest.mark.parametrize("num,world,batch,kind", [(1000, 1, 16, "flat"), (1003, 2, 8, "ivfflat"),
                                                  (97, 4, 4, "flat"), (4096, 1, 64, "ivfflat")])
def test_plan_covers_every_video_with_the_epoch_plan_shape(num, world, batch, kind):
    x = clustered(num)
    index = NeighbourIndex(x, kind=kind, nlist=16, nprobe=1)
    mined = build_mined_plan(x, index, world_size=world, batch_size=batch, neighbours_factor=2,
                             rng=np.random.default_rng(0))
    expected = epoch_plan(num, epoch=0, seed=0, world_size=world, batch_size=batch)
    assert mined.plan.shape == expected.shape and mined.plan.dtype == np.int64
    counts = np.bincount(mined.plan.ravel(), minlength=num)
    assert (counts >= 1).all()  # nothing skipped
    assert counts.sum() - num == mined.padding  # repeats only as padding of the last batch
    for step in mined.plan.reshape(len(mined.plan), -1):
        assert len(np.unique(step)) == step.size  # no video twice in one global batch (a false negative)
    assert mined.mined_batches == num // (world * batch)


def test_mined_batches_are_more_similar_than_random():
    x = clustered(2000, clusters=40)
    index = NeighbourIndex(x, kind="ivfflat", nlist=16, nprobe=1)
    mined = build_mined_plan(x, index, world_size=2, batch_size=16, neighbours_factor=2,
                             rng=np.random.default_rng(1))
    random_plan = epoch_plan(len(x), epoch=0, seed=0, world_size=2, batch_size=16)
    mined_sim, random_sim = mean_batch_similarity(x, mined.plan), mean_batch_similarity(x, random_plan)
    assert mined_sim > random_sim + 0.3, (mined_sim, random_sim)


def test_plan_is_a_function_of_the_rng():
    x = clustered(500)
    index = NeighbourIndex(x, kind="flat")
    a, b, c = (build_mined_plan(x, index, world_size=1, batch_size=8, neighbours_factor=2,
                                rng=np.random.default_rng(s)).plan for s in (3, 3, 4))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_corpus_smaller_than_a_batch_and_empty_corpus():
    x = clustered(5)
    mined = build_mined_plan(x, NeighbourIndex(x), world_size=2, batch_size=4, neighbours_factor=2,
                             rng=np.random.default_rng(0))
    assert mined.plan.shape == (1, 2, 4) and set(mined.plan.ravel()) == set(range(5))
    assert mined.mined_batches == 0 and mined.leftover_videos == 5 and mined.padding == 3
    with pytest.raises(ValueError, match="empty corpus"):
        build_mined_plan(np.zeros((0, 4), np.float32), NeighbourIndex(x), world_size=1, batch_size=4,
                         neighbours_factor=2, rng=np.random.default_rng(0))


# ----------------------------------------------------------------------------- provider
class TableModel(torch.nn.Module):
    """A stand-in video/text model whose embedding of video i (and of its captions) is ``table[i]``.

    The dataset writes i into the first pixel (low byte in red, high byte in green) and into the
    caption token ids, so the model needs no real tower. ``calls`` counts forward passes.
    """

    video_mean = (0.0, 0.0, 0.0)
    video_std = (1.0, 1.0, 1.0)

    def __init__(self, table: np.ndarray):
        super().__init__()
        self.register_buffer("table", torch.from_numpy(table))
        self.calls = 0

    def forward(self, video: torch.Tensor, text: dict) -> dict:
        self.calls += 1
        pixel = torch.round(video[:, :2, 0, 0, 0] * 255).long()  # [B, 2]
        index = pixel[:, 0] + 256 * pixel[:, 1]
        return {"video_embedding": self.table[index], "text_embedding": self.table[text["input_ids"][..., 0]].reshape(
            -1, self.table.shape[1])}


class IndexedDataset(torch.utils.data.Dataset):
    def __init__(self, num: int):
        self.num = num

    def __len__(self) -> int:
        return self.num

    def __getitem__(self, item: tuple[int, int]) -> dict:
        index, _ = item
        video = torch.zeros(2, 4, 4, 3, dtype=torch.uint8)
        video[0, 0, 0, 0], video[0, 0, 0, 1] = index % 256, index // 256
        return {"video": video, "text": {"input_ids": torch.full((2, 3), index, dtype=torch.int64)},
                "video_index": torch.tensor(index)}


def retri_config(out_dir, *, batch_size=8, **retri):
    retri = {"enabled": True, "start_epoch": 1, "every_epochs": 1, "index": "flat", "clips_per_video": 2, **retri}
    return config_from_dict({"data": {"batch_size": batch_size, "num_workers": 0},
                             "train": {"output_dir": str(out_dir), "seed": 7}, "retri": retri})


def test_provider_mines_from_start_epoch_and_restores_train_mode(tmp_path):
    table = clustered(200, clusters=10)
    model = TableModel(table).train()
    provider = RetrievalPlanProvider(retri_config(tmp_path, every_epochs=2), model, IndexedDataset(200),
                                      torch.device("cpu"))
    assert provider(0) is None and model.calls == 0  # before start_epoch: the loader's shuffled plan
    plan = provider(1)
    assert model.training and model.calls > 0
    assert plan.shape == (25, 1, 8) and sorted(plan.ravel()) == list(range(200))
    calls = model.calls
    assert provider(2) is not None and model.calls == calls  # between mining epochs: cached embeddings
    assert provider(3) is not None and model.calls > calls
    records = [json.loads(line) for line in (tmp_path / "retri.jsonl").read_text().splitlines()]
    assert [r["mined_fresh"] for r in records] == [True, False, True]
    assert all(r["similarity_mined"] > r["similarity_random"] for r in records)


def test_provider_skips_mining_on_non_finite_embeddings(tmp_path, caplog):
    table = clustered(64)
    table[5] = np.nan  # a diverged model
    provider = RetrievalPlanProvider(retri_config(tmp_path), TableModel(table), IndexedDataset(64),
                                      torch.device("cpu"))
    with caplog.at_level(logging.WARNING, logger="mmpt_lite"):
        assert provider(1) is None
    assert any("not finite" in r.getMessage() and "mining skipped" in r.getMessage() for r in caplog.records)


def test_provider_empty_and_single_batch_corpus(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="mmpt_lite"):
        for num in (0, 8):
            provider = RetrievalPlanProvider(retri_config(tmp_path), TableModel(clustered(max(num, 1))),
                                              IndexedDataset(num), torch.device("cpu"))
            assert provider(1) is None
    messages = " | ".join(r.getMessage() for r in caplog.records)
    assert "corpus is empty" in messages and "fit in one global batch" in messages


def test_resume_continues_the_provided_plan(tmp_path):
    dataset = IndexedDataset(40)
    provider = RetrievalPlanProvider(retri_config(tmp_path, batch_size=4, start_epoch=0), TableModel(clustered(40)),
                                      dataset, torch.device("cpu"))
    loader = TrainLoader(dataset, batch_size=4, rank=0, world_size=1, seed=7, plan_provider=provider)
    batches = iter(loader)
    seen = [next(batches).video_index for _ in range(3)]
    state = loader.state_dict()
    expected = next(batches).video_index

    def must_not_mine(epoch):
        raise AssertionError("a resumed epoch must continue its checkpointed plan")

    resumed = TrainLoader(dataset, batch_size=4, rank=0, world_size=1, seed=7, plan_provider=must_not_mine)
    resumed.load_state_dict(state)
    assert torch.equal(next(iter(resumed)).video_index, expected)
    assert np.array_equal(state["plan"].numpy()[:3].reshape(3, -1), torch.stack(seen).numpy())


def test_shard_range_partitions_the_corpus():
    for num, world in ((10, 3), (5, 4), (1, 2)):
        parts = [shard_range(num, r, world) for r in range(world)]
        assert [i for p in parts for i in p] == list(range(num))


def _two_rank_worker(rank: int, world: int, port: int, out_dir: str, table: np.ndarray) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        provider = RetrievalPlanProvider(retri_config(out_dir, batch_size=4), TableModel(table),
                                          IndexedDataset(len(table)), torch.device("cpu"))
        plans = [provider(epoch) for epoch in (1, 2)]
        np.save(f"{out_dir}/plan_rank{rank}.npy", np.stack(plans))
    finally:
        dist.destroy_process_group()


def test_provider_is_identical_on_two_ranks(tmp_path):
    table = clustered(37, clusters=4)  # 37 videos: the second rank's shard is one video short
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_two_rank_worker, args=(2, port, str(tmp_path), table), nprocs=2, join=True)
    plan0, plan1 = (np.load(tmp_path / f"plan_rank{r}.npy") for r in (0, 1))
    assert np.array_equal(plan0, plan1) and plan0.shape == (2, 5, 2, 4)
    for plan in plan0:
        assert set(plan.ravel()) == set(range(37))
    # Rank 0 planned from the gathered shards exactly what one process planning the same vectors makes.
    single = RetrievalPlanProvider(retri_config(tmp_path / "single", batch_size=8), TableModel(table),
                                    IndexedDataset(len(table)), torch.device("cpu"))
    vectors = single.embed_corpus(1)
    index = NeighbourIndex(vectors, kind="flat")
    expected = build_mined_plan(vectors, index, world_size=2, batch_size=4, neighbours_factor=2,
                                rng=plan_rng(7, 1)).plan
    assert np.array_equal(plan0[0], expected)
