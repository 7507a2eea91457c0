"""The TrainLoader's plan provider for retrieval-augmented training (VideoCLIP's hard-negative batches).

Before each epoch from ``retri.start_epoch`` on, ``TrainLoader`` calls the provider on every rank:

1. Embed the corpus (every ``retri.every_epochs`` epochs): each rank embeds a contiguous shard of the
   videos with the current weights (``model.eval()``, no grad; the train/eval mode is restored), from
   ``retri.clips_per_video`` clips per video. A video's vector is the mean over its clips of
   (video embedding + mean of its caption embeddings) / 2, each L2-normalised first — VideoCLIP
   averages the pooled video and text vectors; normalising keeps one modality's scale (MIL-NCE
   embeddings are not normalised) from deciding the neighbours. For ``metric: ip`` the result is
   normalised again, so inner product = cosine.
2. Rank 0 gathers the shards, builds the faiss index, makes the batch plan
   (``retrieval.plan.build_mined_plan``) and broadcasts it; every rank returns the same plan.
3. Epochs in between re-plan from rank 0's cached embeddings with the epoch's own random draws: the
   batches stay hard (VideoCLIP re-mines every epoch) while the embedding pass is paid only every
   ``every_epochs`` epochs. After a restart the cache is empty, so the first epoch that needs it embeds
   again with the resumed weights (a resumed run then matches an uninterrupted one up to that epoch's
   neighbours; the checkpointed epoch itself continues its saved plan).

With several clips per video in the dataset (``data.clips_per_video`` = c, e.g. NORTON's paragraphs) the
videos are mined as units: a video's vector comes from clips of its own (sample ``v·c + j``), the plan is made
with batches of B/c videos and each video is expanded to its c samples side by side in part order, as
``epoch_plan(group=c)`` lays them out.

Returns None (the loader then uses its shuffled ``epoch_plan``) before ``start_epoch``, for an empty
corpus or one that fits in a single global batch (mining cannot change that batch), and when the
embeddings are not finite (a diverged model): that epoch is not mined, with a warning, and training
goes on. Rank 0 logs the mining times and the mean in-batch cosine similarity of the mined plan vs
the default random plan, and appends them to ``<train.output_dir>/retri.jsonl``.
"""

from __future__ import annotations

import json
import logging
import math
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader

from mmpt_lite import distributed as mdist
from mmpt_lite.config import RunConfig, resolve_path
from mmpt_lite.data.batch import collate
from mmpt_lite.data.loader import epoch_plan
from mmpt_lite.models.preprocess import VideoInput
from mmpt_lite.precision import use_bf16
from mmpt_lite.progress import progress_bar
from mmpt_lite.retrieval.index import NeighbourIndex
from mmpt_lite.retrieval.plan import build_mined_plan, mean_batch_similarity

log = logging.getLogger("mmpt_lite")

_RETRI_STREAM = 0x52E7  # keeps mining's random draws (embedding clips, plan) apart from the training slots'


def clip_seed(seed: int, epoch: int, video: int, clip: int) -> int:
    """The sample seed of clip ``clip`` of ``video`` when embedding the corpus at ``epoch``."""
    return int(np.random.SeedSequence([seed, epoch, video, clip, _RETRI_STREAM]).generate_state(1, np.uint64)[0])


def plan_rng(seed: int, epoch: int) -> np.random.Generator:
    """The generator of epoch ``epoch``'s batch plan (seeds and draws from the neighbour pools)."""
    return np.random.default_rng([seed, epoch, _RETRI_STREAM])


def shard_range(num_videos: int, rank: int, world_size: int) -> range:
    """The contiguous block of video indices rank ``rank`` embeds (the last ones may be short or empty)."""
    per_rank = math.ceil(num_videos / world_size)
    return range(min(num_videos, rank * per_rank), min(num_videos, (rank + 1) * per_rank))


@torch.no_grad()
def embed_videos(model: torch.nn.Module, dataset, videos: range, *, epoch: int, seed: int, clips_per_video: int,
                 batch_size: int, num_workers: int, device: torch.device, use_bf16: bool,
                 group: int = 1) -> torch.Tensor:
    """Per-video retrieval vectors (see the module docstring): float32 [len(videos), D] on the CPU.

    ``group``: the dataset's samples per video (sample ``v·group + j`` is part j of video v); clip c of the
    ``clips_per_video`` embedded is part c mod group."""
    pairs = [(v, c) for v in videos for c in range(clips_per_video)]
    items = [(v * group + c % group, clip_seed(seed, epoch, v, c)) for v, c in pairs]
    if not items:
        return torch.zeros(0, 0)
    video_input = VideoInput(model, device)
    # The items are the sampler: the loader reads dataset[item] in their order, in its workers.
    loader = DataLoader(dataset, batch_size=batch_size, sampler=items, num_workers=num_workers, collate_fn=collate)
    # Row of each item's video in the result; the loader keeps the item order, so batch b is items[b·B:(b+1)·B].
    rows = torch.tensor([v - videos.start for v, _ in pairs])
    sums: torch.Tensor | None = None
    batches = progress_bar(loader, desc=f"retri epoch {epoch}: embedding", unit="batch", leave=False,
                           disable=mdist.get_rank() != 0)
    for step, batch in enumerate(batches):
        batch = batch.to(device)
        video = video_input(batch.video)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            out = model(video=video, text=batch.text)  # the candidates only: [B, K, L] -> B·K text rows
        v = F.normalize(out["video_embedding"].float(), dim=-1)
        t = F.normalize(out["text_embedding"].float(), dim=-1).view(len(v), -1, v.shape[-1]).mean(1)
        vectors = ((v + F.normalize(t, dim=-1)) / 2).cpu()
        if sums is None:
            sums = torch.zeros(len(videos), vectors.shape[-1])
        sums.index_add_(0, rows[step * batch_size:step * batch_size + len(vectors)], vectors)
    return sums / clips_per_video


def gather_to_main(local: torch.Tensor, num_videos: int, dim: int, device: torch.device) -> np.ndarray | None:
    """Concatenate every rank's shard (``shard_range`` order) on rank 0: float32 [N, D]; None elsewhere."""
    if not mdist.is_dist():
        return local.numpy()
    world = mdist.get_world_size()
    per_rank = math.ceil(num_videos / world)
    comm_device = device if dist.get_backend() == "nccl" else torch.device("cpu")
    padded = torch.zeros(per_rank, dim, device=comm_device)  # equal sizes for the collective
    padded[:len(local)] = local.to(comm_device)
    parts = [torch.empty_like(padded) for _ in range(world)] if mdist.get_rank() == 0 else None
    dist.gather(padded, parts, dst=0)
    if parts is None:
        return None
    return torch.cat(parts)[:num_videos].cpu().numpy()


class RetrievalPlanProvider:
    """``provider(epoch) -> int64 [steps, world, batch] | None``; call it on every rank (it is collective)."""

    def __init__(self, cfg: RunConfig, model: torch.nn.Module, dataset, device: torch.device):
        self.cfg, self.model, self.dataset, self.device = cfg, model, dataset, torch.device(device)
        self.retri = cfg.retri
        self.use_bf16 = use_bf16(cfg.train.precision, self.device)
        self.embeddings: np.ndarray | None = None  # rank 0: the last finite corpus embeddings
        self.have_embeddings = False  # every rank: whether rank 0 holds them (keeps the collectives in step)
        self.log_path = resolve_path(cfg.train.output_dir) / "retri.jsonl"
        self.group = getattr(dataset, "clips_per_video", 1)  # samples per video, kept side by side in a batch

    def mines_at(self, epoch: int) -> bool:
        """Whether ``epoch`` embeds the corpus afresh (others re-plan from the cached embeddings)."""
        every = max(1, self.retri.every_epochs)
        return epoch >= self.retri.start_epoch and (epoch - self.retri.start_epoch) % every == 0

    def __call__(self, epoch: int) -> np.ndarray | None:
        if epoch < self.retri.start_epoch:
            return None
        world, batch_size = mdist.get_world_size(), self.cfg.data.batch_size // self.group  # videos per batch
        num_videos = len(self.dataset) // self.group
        if num_videos == 0:
            log.warning("retri epoch %d: the training corpus is empty; nothing to mine", epoch)
            return None
        if num_videos <= world * batch_size:
            log.warning("retri epoch %d: %d videos fit in one global batch of %d; mining cannot change it, "
                        "using the default plan", epoch, num_videos, world * batch_size)
            return None
        timings: dict[str, float] = {}
        if self.mines_at(epoch) or not self.have_embeddings:
            start = time.perf_counter()
            self.embeddings = self.embed_corpus(epoch)
            timings["embed_s"] = time.perf_counter() - start
            self.have_embeddings = mdist.broadcast_object(self.embeddings is not None)
        plan = self._plan_on_main(epoch, timings) if mdist.get_rank() == 0 else None
        return mdist.broadcast_object(plan)

    def embed_corpus(self, epoch: int) -> np.ndarray | None:
        """Embed this rank's shard and gather (collective): rank 0 gets float32 [N, D], or None if any
        vector is not finite (warned); other ranks get None."""
        rank, world = mdist.get_rank(), mdist.get_world_size()
        num_videos = len(self.dataset) // self.group
        was_training = self.model.training
        self.model.eval()
        try:
            local = embed_videos(self.model, self.dataset, shard_range(num_videos, rank, world), epoch=epoch,
                                 seed=self.cfg.train.seed, clips_per_video=max(1, self.retri.clips_per_video),
                                 batch_size=self.cfg.data.batch_size, num_workers=self.cfg.data.num_workers,
                                 device=self.device, use_bf16=self.use_bf16, group=self.group)
        finally:
            self.model.train(was_training)
        dim = mdist.broadcast_object(local.shape[-1] if rank == 0 else None)  # rank 0's shard is never empty
        embeddings = gather_to_main(local if len(local) else torch.zeros(0, dim), num_videos, dim, self.device)
        if embeddings is None:
            return None
        bad = int((~np.isfinite(embeddings).all(axis=1)).sum())
        if bad:
            log.warning("retri epoch %d: %d of %d video embeddings are not finite (has the model diverged?); "
                        "mining skipped, this epoch uses the default shuffled plan", epoch, bad, num_videos)
            return None
        if self.retri.metric == "ip":
            embeddings /= np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
        return np.ascontiguousarray(embeddings, dtype=np.float32)

    def _plan_on_main(self, epoch: int, timings: dict[str, float]) -> np.ndarray | None:
        if self.embeddings is None:
            return None
        world, batch_size, retri = mdist.get_world_size(), self.cfg.data.batch_size // self.group, self.retri
        start = time.perf_counter()
        index = NeighbourIndex(self.embeddings, kind=retri.index, metric=retri.metric, nlist=retri.nlist,
                               nprobe=retri.nprobe, seed=self.cfg.train.seed + epoch)
        timings["index_s"] = time.perf_counter() - start
        start = time.perf_counter()
        mined = build_mined_plan(self.embeddings, index, world_size=world, batch_size=batch_size,
                                 neighbours_factor=retri.neighbours_factor, rng=plan_rng(self.cfg.train.seed, epoch))
        timings["plan_s"] = time.perf_counter() - start
        random_plan = epoch_plan(len(self.embeddings), epoch=epoch, seed=self.cfg.train.seed, world_size=world,
                                 batch_size=batch_size)
        record = {"epoch": epoch, "mined_fresh": "embed_s" in timings, "videos": len(self.embeddings),
                  "index": index.describe(), "index_fallback": index.fallback_reason, **timings,
                  "steps": len(mined.plan), "mined_batches": mined.mined_batches, "rounds": mined.rounds,
                  "final_nprobe": mined.final_nprobe, "leftover_videos": mined.leftover_videos,
                  "similarity_mined": mean_batch_similarity(self.embeddings, mined.plan),
                  "similarity_random": mean_batch_similarity(self.embeddings, random_plan)}
        source = (f"embedded {len(self.embeddings)} videos in {timings['embed_s']:.1f}s" if "embed_s" in timings
                  else "re-planned from cached embeddings")
        log.info("retri epoch %d: %s, index %s %.2fs, plan %d steps (%d mined, %d rounds) %.2fs; mean in-batch "
                 "cosine mined %.3f vs random %.3f", epoch, source, index.describe(), timings["index_s"],
                 len(mined.plan), mined.mined_batches, mined.rounds, timings["plan_s"],
                 record["similarity_mined"], record["similarity_random"])
        try:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with self.log_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as exc:  # a log file must not stop training
            log.warning("retri: cannot append to %s: %s", self.log_path, exc)
        if self.group == 1:
            return mined.plan
        # Each mined video -> its samples v·c .. v·c + c-1 side by side: [steps, world, batch/c] -> [steps, world, batch].
        steps = len(mined.plan)
        return (mined.plan[..., None] * self.group + np.arange(self.group)).reshape(steps, world, -1)

