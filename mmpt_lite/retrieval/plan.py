"""Retrieval-augmented batch plans (VideoCLIP): batches of near-neighbour videos that cover the epoch.

VideoCLIP draws N/batch random seed videos, takes each seed's 2×batch nearest neighbours and samples
a batch from that pool, so the in-batch negatives are hard; videos that no pool reaches are simply
not seen that epoch. Here every video lands in exactly one batch per epoch (as in the default
``epoch_plan``), so an epoch still means one clip of every video:

1. A round draws ``remaining // G`` seeds among the videos not yet placed (G = world × batch, the
   global batch the contrastive loss sees), searches each seed's ``neighbours_factor × G`` nearest
   neighbours *among the remaining videos only*, and walks the seeds in order: a seed whose pool
   still holds G-1 videos not taken earlier in the round gets a batch of itself plus G-1 of them
   drawn at random; otherwise it is dropped.
2. Rounds repeat on what is left. About half the seeds of a round lose their pool to earlier seeds;
   that is competition, which the next round resolves. But when more than half of the seeds' pools
   come back short (the search found fewer than G-1 unplaced neighbours), the IVF search widens
   (nprobe × 4): late in the epoch the unplaced videos are scattered and the few lists a seed probes
   no longer hold G of them. A round that forms no batch had only short pools, so it always widens;
   once the search is exact the first seed of a round always gets a batch, so the loop ends.
3. Fewer than G videos remain: they form the last batch, padded with other videos drawn at random
   (with repeats only when the corpus is smaller than one global batch).

The batches are shuffled, each batch's slots too, and cut into ``[steps, world_size, batch_size]``,
so rank r trains on row r of a mined global batch. steps = ceil(N / G), as for ``epoch_plan``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mmpt_lite.retrieval.index import NeighbourIndex

WIDEN_FACTOR = 4  # nprobe multiplier when the search limits a round
SHORT_POOL_FRACTION = 0.5  # widen when more than this fraction of a round's pools came back short


@dataclass
class MinedPlan:
    """A batch plan and how it was made.

    plan: int64 [steps, world_size, batch_size] video indices.
    mined_batches: batches drawn from a seed's neighbour pool; the rest (0 or 1) is the padded leftover.
    rounds: seed rounds run. searches: seed queries sent to the index. final_nprobe: IVF lists scanned in
    the last round (1 for Flat). leftover_videos: unplaced videos in the last batch. padding: slots of
    that batch filled with other videos.
    """

    plan: np.ndarray
    mined_batches: int
    rounds: int
    searches: int
    final_nprobe: int
    leftover_videos: int
    padding: int


def _pad_last_batch(leftover: np.ndarray, size: int, num_videos: int, rng: np.random.Generator) -> np.ndarray:
    """``leftover`` plus random other videos up to ``size`` (repeats only if the corpus is that small)."""
    pad = size - len(leftover)
    others = np.setdiff1d(np.arange(num_videos), leftover)
    if len(others) >= pad:
        filler = rng.choice(others, pad, replace=False)
    else:  # the corpus is smaller than one global batch: repeats cannot be avoided
        filler = rng.choice(num_videos, pad, replace=True)
    return np.concatenate([leftover, filler])


def _seed_round(vectors: np.ndarray, index: NeighbourIndex, remaining: np.ndarray, *, global_batch: int,
                pool_size: int, nprobe: int, rng: np.random.Generator) -> tuple[list[np.ndarray], int, int]:
    """One round of step 1 (module docstring): batches of G video indices, the number of seeds searched and
    how many of their pools the search returned short (fewer than G-1 unplaced neighbours)."""
    candidates = np.flatnonzero(remaining)
    seeds = rng.choice(candidates, len(candidates) // global_batch, replace=False)
    _, pools = index.search(vectors[seeds], pool_size, allowed=remaining, nprobe=nprobe)
    taken = np.zeros(len(remaining), dtype=bool)  # placed earlier in this round
    batches = []
    short = 0
    for seed, pool in zip(seeds, pools, strict=True):
        pool = pool[(pool >= 0) & (pool != seed)]
        if len(pool) < global_batch - 1:
            short += 1
            continue
        if taken[seed]:
            continue
        free = pool[~taken[pool]]
        if len(free) < global_batch - 1:
            continue
        batch = np.concatenate([[seed], rng.choice(free, global_batch - 1, replace=False)])
        taken[batch] = True
        batches.append(batch)
    return batches, len(seeds), short


def build_mined_plan(vectors: np.ndarray, index: NeighbourIndex, *, world_size: int, batch_size: int,
                     neighbours_factor: int, rng: np.random.Generator) -> MinedPlan:
    """Cover all N videos with batches of near neighbours (see the module docstring).

    vectors: float32 [N, D], the embeddings ``index`` was built on (the seeds' queries).
    Returns a MinedPlan whose ``plan`` is int64 [ceil(N / G), world_size, batch_size], G = world × batch.
    """
    num_videos = len(vectors)
    if num_videos == 0:
        raise ValueError("cannot plan batches for an empty corpus")
    if num_videos != index.num_vectors:
        raise ValueError(f"{num_videos} vectors but the index holds {index.num_vectors}")
    global_batch = world_size * batch_size
    pool_size = min(num_videos, max(1, neighbours_factor) * global_batch)
    remaining = np.ones(num_videos, dtype=bool)
    nprobe, rounds, searches = index.nprobe, 0, 0
    batches: list[np.ndarray] = []
    while remaining.sum() >= global_batch:
        formed, num_seeds, short = _seed_round(vectors, index, remaining, global_batch=global_batch,
                                               pool_size=pool_size, nprobe=nprobe, rng=rng)
        rounds, searches = rounds + 1, searches + num_seeds
        for batch in formed:
            remaining[batch] = False
        batches.extend(formed)
        if short > SHORT_POOL_FRACTION * num_seeds and not index.is_exact(nprobe):
            nprobe = min(index.nlist, nprobe * WIDEN_FACTOR)
    mined = len(batches)
    leftover = np.flatnonzero(remaining)
    if len(leftover):
        batches.append(_pad_last_batch(leftover, global_batch, num_videos, rng))
    order = rng.permutation(len(batches))
    plan = np.stack([rng.permutation(batches[i]) for i in order]).astype(np.int64)
    assert len(plan) == math.ceil(num_videos / global_batch)
    return MinedPlan(plan=plan.reshape(len(plan), world_size, batch_size), mined_batches=mined, rounds=rounds,
                     searches=searches, final_nprobe=nprobe if index.kind == "ivfflat" else 1,
                     leftover_videos=len(leftover), padding=global_batch - len(leftover) if len(leftover) else 0)


def mean_batch_similarity(vectors: np.ndarray, plan: np.ndarray, *, max_batches: int = 256,
                          rng: np.random.Generator | None = None) -> float:
    """Mean cosine similarity over distinct pairs within each step's global batch, averaged over steps.

    vectors: [N, D]; plan: int [steps, world, batch] (all ranks of a step form one batch, as the loss
    gathers them). At most ``max_batches`` random steps are measured (enough for a stable mean at 1M).
    """
    steps = plan.reshape(len(plan), -1)
    if steps.shape[1] < 2:
        return float("nan")
    if len(steps) > max_batches:
        rng = rng if rng is not None else np.random.default_rng(0)
        steps = steps[rng.choice(len(steps), max_batches, replace=False)]
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    size = steps.shape[1]
    means = []
    for batch in steps:
        x = unit[batch].astype(np.float64)
        gram = x @ x.T
        means.append((gram.sum() - np.trace(gram)) / (size * (size - 1)))
    return float(np.mean(means))
