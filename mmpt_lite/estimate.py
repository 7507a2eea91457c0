"""How long a staged run should take on this machine, printed before it starts (``mmpt_lite.pipeline``).

A cost model with one set of constants measured on a reference machine (``REFERENCE``), scaled to this
machine by a one-second matrix-product check (the 2048³ GEMM rate with every core; training, mining and
evaluation here are dominated by matrix products, so their time scales with it):

- corpus: rendered pixel-frames of the synthetic plan (0 when the corpus exists);
- shards: training videos (0 when the shard folder has its ``report.json``);
- each training stage: steps x global batch x training FLOPs per video (``models.flops``, the figure the
  trainer's MFU uses) / (the stage's measured fraction of the GEMM rate x this machine's GEMM rate), plus,
  for mined batches, one forward pass over the corpus per embedding epoch;
- report: the reference time of the default protocol.

It is an estimate for the main job's shapes: a stage whose model or clip shape differs is scaled by its FLOPs,
which holds roughly; a real corpus's decode costs are not modelled (only the GEMM-bound parts are).
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from dataclasses import dataclass

import torch

from mmpt_lite.config import STAGE_TASKS, RunConfig, resolve_path
from mmpt_lite.data.prepare import shard_folder
from mmpt_lite.precision import use_bf16

# Measured on the reference machine: AMD EPYC, 2 cores (AVX512-BF16), torch 2.13.0+cpu, `--jobtype local_small`
# (2 ranks x 1 thread, no loader workers), projects/how2_pretrain.yaml (docs/benchmarks.md).
REFERENCE = {
    "machine": "2-core AMD EPYC",
    "gemm_gflops": 151.0,               # 2048³ fp32 GEMM, 2 threads (benchmarks/bench_train_throughput.py)
    "render_mpixel_frames_per_s": 34.8,  # synthetic corpus: 2,681 M pixel-frames (3,176 videos) in 77 s
    "shard_videos_per_s": 107.0,        # JPEG shards at 2.5 fps, short side 64: 3,000 videos in 28 s
    # Training GFLOP/s achieved (loader, DDP and optimiser included) / fp32 GEMM GFLOP/s: videos/s x training
    # GFLOP per video (masked 1.458, contrastive 3.49) / 151; videos/s 56.1, 62.5 (masked), 31.1, 49.3 (MIL-NCE)
    "train_fraction": {("mae", "fp32"): 0.54, ("mae", "bf16"): 0.60, ("milnce", "fp32"): 0.72, ("milnce", "bf16"): 1.14},
    # Corpus clips embedded per second per fp32 GEMM GFLOP/s in a mining pass: 3,000 clips in 23 s in bf16; the
    # fp32 figure is that scaled by the contrastive step's fp32/bf16 ratio (31.1 / 49.3), not measured.
    "embed_clips_per_gflops": {"bf16": 0.864, "fp32": 0.545},
    "report_s": 35.0,                   # the report stage at the default eval protocol (6 evaluations)
}


@dataclass
class Phase:
    name: str
    seconds: float
    detail: str


def gemm_gflops(size: int = 2048, budget_s: float = 1.0) -> float:
    """fp32 GEMM rate with torch's current threads: the median of repeated products within ``budget_s`` (the
    statistic of the reference figure; the best single product runs ~20% above it on turbo clocks)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    rates, end = [], time.perf_counter() + budget_s
    while time.perf_counter() < end or len(rates) < 3:
        start = time.perf_counter()
        a @ b
        rates.append(2 * size ** 3 / (time.perf_counter() - start) / 1e9)
    return statistics.median(rates)


def _precision(cfg: RunConfig) -> str:
    return "bf16" if use_bf16(cfg.train.precision, torch.device("cpu")) else "fp32"


def train_flops_per_video(cfg: RunConfig) -> float:
    """Training FLOPs (3 x 2 x multiply-adds) per video of a masked or contrastive run."""
    from mmpt_lite.models.flops import TRAIN_FLOPS_PER_MAC, mae_macs_per_video, video_macs_per_video

    frames, size = cfg.data.num_frames, cfg.data.video_size
    if cfg.train.task == "mae":
        from mmpt_lite.models.mae import build_mae_pretrainer
        macs, _ = mae_macs_per_video(build_mae_pretrainer(cfg.model.video.preset, cfg.mae), frames, size)
    else:
        from mmpt_lite.models.build import build_video_tower
        macs, _ = video_macs_per_video(build_video_tower(cfg.model.video.preset, cfg.model.embed_dim), frames, size)
    return TRAIN_FLOPS_PER_MAC * macs


def _plan(cfg: RunConfig):
    s = cfg.data.synthetic
    return _cached_plan(s.seed, s.size, s.train_hue, s.train_videos, s.render.short_side, s.render.fps)


@functools.lru_cache(maxsize=2)
def _cached_plan(*settings):  # planning 3,000 videos takes seconds: once per settings
    from mmpt_lite.synth.plan import plan_corpus
    return plan_corpus(*settings)


def _num_videos(cfg: RunConfig) -> int | None:
    """Training videos of a synthetic corpus (None for a real one: the model does not price it)."""
    synthetic = cfg.data.synthetic
    if not synthetic.enabled:
        return None
    return synthetic.train_videos or _plan(cfg).counts["train"]


def embedding_epochs(cfg: RunConfig, steps_per_epoch: int) -> int:
    """How many corpus embedding passes mining makes over ``train.max_steps``."""
    if not cfg.retri.enabled:
        return 0
    epochs = math.ceil(cfg.train.max_steps / steps_per_epoch)  # numbered from 0, as the loader does
    return sum(1 for e in range(cfg.retri.start_epoch, epochs)
               if (e - cfg.retri.start_epoch) % max(1, cfg.retri.every_epochs) == 0)


def training_phase(name: str, cfg: RunConfig, world: int, speed: float) -> Phase | None:
    """``speed``: this machine's GEMM rate / the reference's."""
    fraction = REFERENCE["train_fraction"].get((cfg.train.task, _precision(cfg)))
    if not fraction:
        return None
    videos = cfg.train.max_steps * cfg.data.batch_size * world
    achieved = fraction * REFERENCE["gemm_gflops"] * speed * 1e9
    seconds = videos * train_flops_per_video(cfg) / achieved
    detail = f"{cfg.train.max_steps} steps x {cfg.data.batch_size * world} videos"
    num_videos = _num_videos(cfg)
    if cfg.train.task == "milnce" and cfg.retri.enabled and num_videos:
        passes = embedding_epochs(cfg, math.ceil(num_videos / (cfg.data.batch_size * world)))
        clips = passes * num_videos * cfg.retri.clips_per_video
        seconds += clips / (REFERENCE["embed_clips_per_gflops"][_precision(cfg)] * REFERENCE["gemm_gflops"] * speed)
        detail += f" + {passes} mining passes"
    return Phase(name, seconds, detail)


def input_phases(cfg: RunConfig, speed: float) -> list[Phase]:
    """Corpus generation and sharding, when the first stage will have to do them."""
    phases = []
    synthetic = cfg.data.synthetic
    if synthetic.enabled and not (resolve_path(cfg.data.root) / "manifest.json").is_file():
        from mmpt_lite.synth.corpus import _select, chosen_sets
        specs = _select(_plan(cfg), chosen_sets(synthetic.sets))[0]
        mpixel_frames = sum(s.width * s.height * s.num_frames for s in specs) / 1e6
        phases.append(Phase("corpus", mpixel_frames / (REFERENCE["render_mpixel_frames_per_s"] * speed),
                            f"{len(specs)} videos"))
    num_videos = _num_videos(cfg)
    if num_videos and not (shard_folder(cfg, resolve_path(cfg.data.root)) / "report.json").is_file():
        phases.append(Phase("shards", num_videos / (REFERENCE["shard_videos_per_s"] * speed), f"{num_videos} videos"))
    return phases


def estimate(stages: list[tuple[str, RunConfig]], world: int, skip: set[str] = frozenset()) -> tuple[list[Phase], float]:
    """(phases, this machine's GEMM GFLOP/s) for the stages not in ``skip``; a stage the model cannot price
    is left out."""
    gflops = gemm_gflops()
    speed = gflops / REFERENCE["gemm_gflops"]
    todo = [(name, cfg) for name, cfg in stages if name not in skip]
    phases = input_phases(todo[0][1], speed) if todo else []
    for name, cfg in todo:
        if name == "report":
            phases.append(Phase(name, REFERENCE["report_s"] / speed, "3 evaluations x 2 models"))
        elif name in STAGE_TASKS:
            phase = training_phase(name, cfg, world, speed)
            if phase is not None:
                phases.append(phase)
    return phases, gflops


def describe(phases: list[Phase], gflops: float) -> str:
    total = sum(p.seconds for p in phases)
    parts = ", ".join(f"{p.name} {_minutes(p.seconds)} ({p.detail})" for p in phases)
    return (f"expected time on this machine: about {_minutes(total)} [{parts}]; from a 1 s check of this "
            f"machine's fp32 matrix-product rate ({gflops:.0f} GFLOP/s; {REFERENCE['gemm_gflops']:.0f} on the "
            f"{REFERENCE['machine']} the figures were measured on)")


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"
