"""UMT stage 1 (``train.task: umt``): a frozen image teacher picks and explains the tokens a video student sees.

The data are masked pretraining's (``prepare`` = ``prepare_mae_data``: ``mae.dataset``, ``mae.sampling_stride``,
uint8 clips). On the device, per micro-batch: the uint8 clip becomes the student's input (its ImageNet
mean/std) and the teacher's frames (the teacher's own mean/std, e.g. CLIP's) from the same [0, 1] pixels; the
teacher gives per-frame targets and attention; the kept tokens are drawn from a per-step ``torch.Generator``
(``StepSeeds``, so a resumed run draws what an uninterrupted run would have); the student's loss is returned.
The model (checkpointed, optimised) is the student alone; the frozen teacher is held here.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from mmpt_lite import distributed as mdist
from mmpt_lite.config import ConfigError, RunConfig
from mmpt_lite.data.batch import ClipBatch
from mmpt_lite.data.prepare import PreparedData
from mmpt_lite.data.video_sets import MaeClipDataset
from mmpt_lite.data.video_sets import prepare_mae_data as prepare  # noqa: F401 - the task module's prepare
from mmpt_lite.models.flops import TRAIN_FLOPS_PER_MAC, count_macs, param_count
from mmpt_lite.models.umt import (
    ImageTeacher,
    UmtStudent,
    build_umt_student,
    frame_index_to_clip,
    gather_frame_targets,
    load_teacher,
    select_tokens,
)
from mmpt_lite.train.tasks.base import Components, SeededTask, StepSeeds

log = logging.getLogger("mmpt_lite")


def kept_per_frame(tokens_per_frame: int, keep_ratio: float) -> int:
    """Tokens kept per frame: N − int((1 − keep_ratio)·N), VideoMAE's way of counting (196 at 0.2 -> 40)."""
    return tokens_per_frame - int((1.0 - keep_ratio) * tokens_per_frame)


class UmtTask(SeededTask):
    """uint8 batch [B, T, H, W, 3] -> teacher targets [B·T, K, N, D_t] and attention [B·T, N] -> kept ids
    [B·T, k] -> student loss on [B, T·k] tokens."""

    def __init__(self, model: UmtStudent, teacher: ImageTeacher, keep_ratio: float, seeds: StepSeeds,
                 device: torch.device):
        self.teacher, self.keep_ratio, self.seeds, self.device = teacher.to(device), keep_ratio, seeds, device

        def stats(values) -> torch.Tensor:
            return torch.tensor(values, device=device, dtype=torch.float32).view(1, 3, 1, 1)

        self.student_mean, self.student_std = stats(model.video_mean), stats(model.video_std)
        self.teacher_mean, self.teacher_std = stats(teacher.mean), stats(teacher.std)

    def inputs(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 [B, T, H, W, 3] -> (student video [B, 3, T, H, W], teacher frames [B·T, 3, H, W]), both from
        the same [0, 1] pixels, each with its own normalisation."""
        frames = video.to(self.device, non_blocking=True).flatten(0, 1).permute(0, 3, 1, 2).float().div_(255.0)
        student = (frames - self.student_mean) / self.student_std
        b, t = video.shape[:2]
        student = student.view(b, t, *student.shape[1:]).transpose(1, 2)
        return student, (frames - self.teacher_mean) / self.teacher_std

    def step(self, module: nn.Module, batch: ClipBatch) -> dict:
        frames_per_clip = batch.video.shape[1]
        student, frames = self.inputs(batch.video)
        targets, attention = self.teacher(frames)
        tokens = attention.shape[1]
        index = select_tokens(attention, kept_per_frame(tokens, self.keep_ratio), self.seeds.next_generator(self.device))
        out = module(student, frame_index_to_clip(index, frames_per_clip, tokens),
                     gather_frame_targets(targets, index, frames_per_clip))
        return {"loss": out["loss"], "batch_size": student.shape[0]}


class _StudentFeatures(nn.Module):
    """Traceable view of the student: tensors in, features out (the kept ids are an input)."""

    def __init__(self, model: UmtStudent):
        super().__init__()
        self.model = model

    def forward(self, video: torch.Tensor, keep_index: torch.Tensor) -> torch.Tensor:
        return self.model.features(video, keep_index)


class _TeacherTargets(nn.Module):
    def __init__(self, teacher: ImageTeacher):
        super().__init__()
        self.teacher = teacher

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.teacher.targets_and_attention(frames)[0]


def umt_macs_per_video(student: UmtStudent, teacher: ImageTeacher, num_frames: int, size: int,
                       keep_ratio: float) -> tuple[int, int]:
    """(student MACs on the kept tokens, teacher MACs on every frame) for one ``num_frames``×``size``² clip."""
    grid = size // student.encoder.patch_size
    kept = kept_per_frame(grid * grid, keep_ratio)
    keep_index = frame_index_to_clip(torch.arange(kept)[None].expand(num_frames, -1), num_frames, grid * grid)
    student_macs, _ = count_macs(_StudentFeatures(student), (torch.zeros(1, 3, num_frames, size, size), keep_index))
    teacher_macs, _ = count_macs(_TeacherTargets(teacher), (torch.zeros(num_frames, 3, size, size),))
    return student_macs, teacher_macs


def describe(cfg: RunConfig) -> str:
    u = cfg.umt
    return (f"video={cfg.model.video.preset} (tubelet 1) | UMT stage 1: {u.teacher_kind} teacher {u.teacher or '?'}, "
            f"keep {u.keep_ratio:g} per frame, last {u.align_layers} layers aligned")


def build(cfg: RunConfig, prepared: PreparedData, device: torch.device) -> Components:
    if cfg.model.video.init_from:
        raise ValueError("model.video.init_from initialises contrastive runs; UMT pretraining starts from scratch")
    teacher = load_teacher(cfg.umt.teacher_kind, cfg.umt.teacher, cfg.umt.align_layers)
    model = build_umt_student(cfg.model.video.preset, teacher.out_dim, cfg.umt.align_layers, cfg.model.video.attention)
    if model.encoder.patch_size != teacher.patch_size:
        raise ConfigError(f"umt.teacher: its {teacher.patch_size}-px patches do not match model.video.preset "
                          f"{cfg.model.video.preset}'s {model.encoder.patch_size}-px patches (the token grids must agree)")
    if cfg.data.video_size % teacher.patch_size:
        raise ConfigError(f"data.video_size: {cfg.data.video_size} is not a multiple of the {teacher.patch_size}-px patch")
    try:
        student_macs, teacher_macs = umt_macs_per_video(model, teacher, cfg.data.num_frames, cfg.data.video_size,
                                                        cfg.umt.keep_ratio)
    except Exception as exc:  # noqa: BLE001 - a count the tracer cannot make only costs the MFU column
        log.warning("UMT: multiply-adds not counted (%s); MFU is not logged", exc)
        student_macs = teacher_macs = 0
    log.info("UMT stage 1: student %s (tubelet 1) %.2fM parameters, teacher %s %.2fM parameters (frozen); "
             "%d×%d² input, keep %g per frame; %.3f G student + %.3f G teacher multiply-adds per video (fvcore)",
             cfg.model.video.preset, param_count(model) / 1e6, cfg.umt.teacher_kind, param_count(teacher) / 1e6,
             cfg.data.num_frames, cfg.data.video_size, cfg.umt.keep_ratio, student_macs / 1e9, teacher_macs / 1e9)
    dataset = MaeClipDataset(prepared.video_store, num_frames=cfg.data.num_frames, stride=cfg.mae.sampling_stride,
                             video_size=cfg.data.video_size)
    task = UmtTask(model, teacher, cfg.umt.keep_ratio, StepSeeds(cfg.train.seed, mdist.get_rank()), device)
    # Trained: 3 × 2 × student MACs (forward + backward); the teacher only runs forward: 2 × its MACs.
    flops = TRAIN_FLOPS_PER_MAC * student_macs + 2 * teacher_macs
    return Components(model=model, dataset=dataset, task=task, flops_per_video=flops)
