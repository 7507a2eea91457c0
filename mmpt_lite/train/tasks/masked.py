"""Masked video pretraining (``train.task: mae``): model, masks, loss, FLOPs.

The data (video-only sets, clip sampling; ``prepare`` = ``prepare_mae_data``) is
``mmpt_lite.data.video_sets``. On the device the task normalises with the encoder's mean/std, draws
the masks from a per-step ``torch.Generator`` there (no mask tensors travel through the loader) and
returns the model's loss.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from mmpt_lite import distributed as mdist
from mmpt_lite.config import RunConfig
from mmpt_lite.data.batch import ClipBatch
from mmpt_lite.data.prepare import PreparedData
from mmpt_lite.data.video_sets import MaeClipDataset
from mmpt_lite.data.video_sets import prepare_mae_data as prepare  # noqa: F401 - the task module's prepare
from mmpt_lite.models.flops import TRAIN_FLOPS_PER_MAC, mae_macs_per_video, param_count
from mmpt_lite.models.mae import VideoMAEPretrainer, build_mae_pretrainer
from mmpt_lite.models.preprocess import VideoInput
from mmpt_lite.train.tasks.base import Components, SeededTask, StepSeeds

log = logging.getLogger("mmpt_lite")


class MaskedTask(SeededTask):
    """uint8 batch -> normalised video on the device -> masks from ``seeds`` (one generator per micro-batch, so a
    resumed run draws the masks an uninterrupted run would have drawn) -> the model's loss."""

    def __init__(self, model: VideoMAEPretrainer, seeds: StepSeeds, device: torch.device):
        self.seeds, self.device = seeds, device
        self.video_input = VideoInput(model, device)

    def step(self, module: nn.Module, batch: ClipBatch) -> dict:
        video = self.video_input(batch.video)
        out = module(video, generator=self.seeds.next_generator(self.device))
        return {"loss": out["loss"], "batch_size": video.shape[0]}


def describe(cfg: RunConfig) -> str:
    m = cfg.mae
    return (f"video={cfg.model.video.preset} | masked pretraining: {m.masking} masking {m.mask_ratio:g}, "
            f"decoder depth {m.decoder_depth}")


def build(cfg: RunConfig, prepared: PreparedData, device: torch.device) -> Components:
    if cfg.model.video.init_from:
        raise ValueError("model.video.init_from initialises contrastive runs; masked pretraining starts from scratch")
    model = build_mae_pretrainer(cfg.model.video.preset, cfg.mae, cfg.model.video.attention)
    macs, _ = mae_macs_per_video(model, cfg.data.num_frames, cfg.data.video_size)
    log.info("masked pretraining: %s, %d×%d² input, %s masking -> %.2fM parameters, %.3f G multiply-adds "
             "per video (fvcore)", cfg.model.video.preset, cfg.data.num_frames, cfg.data.video_size,
             cfg.mae.masking, param_count(model) / 1e6, macs / 1e9)
    dataset = MaeClipDataset(prepared.video_store, num_frames=cfg.data.num_frames, stride=cfg.mae.sampling_stride,
                             video_size=cfg.data.video_size)
    task = MaskedTask(model, StepSeeds(cfg.train.seed, mdist.get_rank()), device)
    return Components(model=model, dataset=dataset, task=task, flops_per_video=TRAIN_FLOPS_PER_MAC * macs)
