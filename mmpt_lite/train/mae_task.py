"""Masked video pretraining as a trainer task (``train.task: mae``): model, masks, loss, FLOPs.

The data (video-only sets, clip sampling) is ``mmpt_lite.data.video_sets``. On the device the task
normalises with the encoder's mean/std, draws the masks from a per-step ``torch.Generator`` there
(no mask tensors travel through the loader) and returns the model's loss.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from mmpt_lite import distributed as mdist
from mmpt_lite.config import RunConfig
from mmpt_lite.data.video_sets import MaeClipDataset, MaePreparedData
from mmpt_lite.models.flops import TRAIN_FLOPS_PER_MAC, mae_macs_per_video, param_count
from mmpt_lite.models.mae import VideoMAEPretrainer, build_mae_pretrainer
from mmpt_lite.models.preprocess import VideoInput
from mmpt_lite.train.main import Components

log = logging.getLogger("mmpt_lite")


class MaskSeeds(nn.Module):
    """Where each micro-batch's masks come from: a device generator seeded by (train.seed, rank, count).

    It takes the trainer's loss-module slot because the trainer checkpoints that module's state:
    the count travels in ``train_state.pt`` (as ``_extra_state``), so a resumed run draws the masks
    an uninterrupted run would have drawn. It has no parameters.
    """

    def __init__(self, seed: int, rank: int):
        super().__init__()
        self.seed, self.rank, self.drawn = seed, rank, 0
        self._generators: dict[torch.device, torch.Generator] = {}

    def next_generator(self, device: torch.device) -> torch.Generator:
        generator = self._generators.setdefault(device, torch.Generator(device))
        state = np.random.SeedSequence([self.seed, self.rank, self.drawn]).generate_state(1, np.uint64)[0]
        self.drawn += 1
        return generator.manual_seed(int(state))

    def get_extra_state(self) -> dict:
        return {"drawn": self.drawn}

    def set_extra_state(self, state: dict) -> None:
        self.drawn = int(state["drawn"])


class MaeTask:
    """uint8 batch -> normalised video on the device -> masks from ``seeds`` -> the model's loss."""

    def __init__(self, model: VideoMAEPretrainer, seeds: MaskSeeds, device: torch.device):
        self.seeds, self.device = seeds, device
        self.video_input = VideoInput(model, device)

    def __call__(self, module: nn.Module, batch: dict) -> dict:
        video = self.video_input(batch["video"])
        out = module(video, generator=self.seeds.next_generator(self.device))
        return {"loss": out["loss"], "batch_size": video.shape[0]}


def build_mae_components(cfg: RunConfig, prepared: MaePreparedData, device: torch.device) -> Components:
    if cfg.model.video.init_from:
        raise ValueError("model.video.init_from initialises contrastive runs; masked pretraining starts from scratch")
    model = build_mae_pretrainer(cfg.model.video.preset, cfg.mae)
    macs, _ = mae_macs_per_video(model, cfg.data.num_frames, cfg.data.video_size)
    log.info("masked pretraining: %s, %d×%d² input, %s masking -> %.2fM parameters, %.3f G multiply-adds "
             "per video (fvcore)", cfg.model.video.preset, cfg.data.num_frames, cfg.data.video_size,
             cfg.mae.masking, param_count(model) / 1e6, macs / 1e9)
    dataset = MaeClipDataset(prepared.video_store, num_frames=cfg.data.num_frames, stride=cfg.mae.sampling_stride,
                             video_size=cfg.data.video_size)
    seeds = MaskSeeds(cfg.train.seed, mdist.get_rank())
    return Components(model=model, loss_fn=seeds, dataset=dataset, task=MaeTask(model, seeds, device),
                      eval_fn=None, flops_per_video=TRAIN_FLOPS_PER_MAC * macs)
