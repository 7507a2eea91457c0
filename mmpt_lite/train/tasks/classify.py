"""Classification fine-tuning (``train.task: classify``): the VideoMAE fine-tuning recipe for any encoder.

Data: a Kinetics-list or SSv2 set (``classify.dataset``, ``classify.root``; the embedded synthetic corpus's set
by default), its training videos sharded at their native frame rate (``data.classify_sets`` reads the lists,
samples dense windows or TSN segments and crops). On the device: mixup / CutMix with label-smoothed targets
(``data.mixup``, randomness drawn per micro-batch from :class:`StepSeeds`, part of the resumable state), the
classifier's logits, soft-target cross-entropy in float32. The model (``models.classifier``) starts from
``model.video.init_from``: a masked-pretraining run, a MIL-NCE run's video tower, another classification run, a
transformers VideoMAE file, or the official S3D checkpoint; missing and unexpected keys are reported.
Evaluation: multi-view testing on the set's validation list (``evaluation.classify``).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch
from torch import nn

from mmpt_lite import distributed as mdist
from mmpt_lite.config import RunConfig, resolve_path
from mmpt_lite.data.batch import ClipBatch
from mmpt_lite.data.classify_sets import ClassifyClipDataset, read_classify_set
from mmpt_lite.data.mixup import MixupSettings, mix_video_batch
from mmpt_lite.data.prepare import PreparedData, ensure_corpus
from mmpt_lite.data.shards import ShardedVideoStore
from mmpt_lite.data.video_sets import ensure_set_shards
from mmpt_lite.losses.classify import soft_target_cross_entropy
from mmpt_lite.models.classifier import VideoClassifier, build_classifier
from mmpt_lite.models.flops import TRAIN_FLOPS_PER_MAC, param_count, video_macs_per_video
from mmpt_lite.models.preprocess import VideoInput
from mmpt_lite.train.tasks.base import Components, StepSeeds, Task

log = logging.getLogger("mmpt_lite")


def set_root(cfg: RunConfig):
    """The classification set's folder: ``classify.root``, else ``<data.root>/<classify.dataset>``."""
    if cfg.classify.root:
        return resolve_path(cfg.classify.root)
    return resolve_path(cfg.data.root) / cfg.classify.dataset


def storage_side(cfg: RunConfig) -> int:
    """Short side the training frames are stored at: the crop for the multi-scale crop (its scales are
    fractions of the short side), the top of the jitter range for short-side jitter."""
    c = cfg.classify
    return c.jitter_scales[1] if c.spatial == "short_side_jitter" else cfg.data.video_size


def prepare(cfg: RunConfig, *, build: bool) -> PreparedData:
    """The training list's frame shards at the set's native rate (built when ``build`` and missing)."""
    root = set_root(cfg)
    dataset = cfg.classify.dataset
    if cfg.classify.root:
        if not root.is_dir():
            raise FileNotFoundError(f"classify.root: {root} is not a folder")
    elif cfg.data.synthetic.enabled:
        ensure_corpus(cfg, resolve_path(cfg.data.root), build)
    shard_root = ensure_set_shards(cfg, root.parent, dataset, build, set_root=root, short_side=storage_side(cfg),
                                   key="classify.dataset")
    name = f"{'how2-synth' if cfg.data.synthetic.enabled and not cfg.classify.root else root.parent.name}/{dataset}"
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, shard_root=str(shard_root)))
    return PreparedData(cfg=cfg, name=name, root=root, shard_root=shard_root, video_store=ShardedVideoStore(shard_root),
                        caption_store=None, msrvtt_csv=None, msrvtt_root=None)


class ClassifyTask(Task):
    """uint8 batch -> normalised video -> mixup/CutMix with smoothed targets -> logits -> soft-target CE."""

    def __init__(self, model: VideoClassifier, settings: MixupSettings, seeds: StepSeeds, device: torch.device):
        self.settings, self.seeds, self.device = settings, seeds, device
        self.num_classes = model.num_classes
        self.video_input = VideoInput(model, device)

    def step(self, module: nn.Module, batch: ClipBatch) -> dict:
        video = self.video_input(batch.video)
        video, targets, _ = mix_video_batch(video, batch.label, self.num_classes, self.settings, self.seeds.next_numpy())
        logits = module(video)["logits"]
        loss = soft_target_cross_entropy(logits=logits, targets=targets)
        # against the clips' own labels: with mixing on, a trend rather than an accuracy
        top1 = (logits.detach().argmax(dim=-1) == batch.label).float().mean()
        return {"loss": loss, "batch_size": video.shape[0], "train_top1": top1}

    def state_dict(self) -> dict:
        return self.seeds.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.seeds.load_state_dict(state)


def describe(cfg: RunConfig) -> str:
    c = cfg.classify
    start = cfg.model.video.init_from or "random init"
    return (f"video={cfg.model.video.preset} | fine-tuning on {c.dataset} ({c.resolved_sampling} sampling) from "
            f"{start}")


def make_eval_fn(cfg: RunConfig, root, device: torch.device):
    """Multi-view testing on the set's validation list, or None (``eval.enabled`` false)."""
    if not cfg.eval.enabled:
        return None
    from mmpt_lite.evaluation.classify import ClassifyEval
    from mmpt_lite.evaluation.runtime import EvalRuntime

    evaluator = ClassifyEval.from_run_config(cfg, root)
    runtime = EvalRuntime.for_training(cfg, device)

    def evaluate(model: nn.Module) -> dict:
        record = evaluator.run(model, runtime)  # JSON-ready for eval_*.json: the confusion matrix as lists
        record = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in record.items()}
        return {**record, "chance_top1": 100.0 / record["num_classes"]}
    return evaluate


def build(cfg: RunConfig, prepared: PreparedData, device: torch.device) -> Components:
    c = cfg.classify
    train_set = read_classify_set(prepared.root, c.dataset, "train")
    model = build_classifier(cfg.model.video.preset, len(train_set.classes), drop_path=c.drop_path,
                             dropout=c.dropout, attention=cfg.model.video.attention)
    if cfg.model.video.init_from:
        from mmpt_lite.models.init_from import init_video_tower
        log.info("model.video.init_from: %s", init_video_tower(model, cfg.model.video.init_from))
    dataset = ClassifyClipDataset(prepared.video_store, train_set, sampling=c.resolved_sampling,
                                  num_frames=cfg.data.num_frames, stride=c.sampling_stride, size=cfg.data.video_size,
                                  spatial=c.spatial, flip=c.flip, jitter=c.jitter_scales)
    if dataset.skipped:
        log.warning("%d training video(s) left out: %s", len(dataset.skipped),
                    "; ".join(f"{k}: {v}" for k, v in list(dataset.skipped.items())[:5]))
    macs, _ = video_macs_per_video(model, cfg.data.num_frames, cfg.data.video_size)
    log.info("classifier: %s, %d classes, %d×%d² input -> %.2fM parameters, %.3f G multiply-adds per clip (fvcore)",
             cfg.model.video.preset, model.num_classes, cfg.data.num_frames, cfg.data.video_size,
             param_count(model) / 1e6, macs / 1e9)
    settings = MixupSettings(mixup_alpha=c.mixup, cutmix_alpha=c.cutmix, prob=c.mixup_prob,
                             switch_prob=c.mixup_switch_prob, label_smoothing=c.label_smoothing)
    task = ClassifyTask(model, settings, StepSeeds(cfg.train.seed, mdist.get_rank()), device)
    return Components(model=model, dataset=dataset, task=task, eval_fn=make_eval_fn(cfg, prepared.root, device),
                      flops_per_video=TRAIN_FLOPS_PER_MAC * macs)


def final_table(init: dict | None, final: dict | None) -> str:
    """The run's last lines: multi-view accuracy at random init and after training."""
    rows = [("random init", init), ("trained", final)]
    if not any(r for _, r in rows):
        return ""
    ref = final or init
    lines = [f"multi-view classification, {ref.get('dataset', '?')} validation list: "
             f"{ref.get('num_evaluated', '?')} of {ref.get('num_listed', '?')} videos, "
             f"{ref.get('num_classes', '?')} classes (chance top-1 {ref.get('chance_top1', float('nan')):.2f}%)",
             f"{'model':<12}{'top-1':>8}{'top-5':>8}{'mean cls':>10}"]
    for name, r in rows:
        if r:
            lines.append(f"{name:<12}{r['top1']:>8.2f}{r['top5']:>8.2f}{r['mean_class_accuracy']:>10.2f}")
    return "\n".join(lines)
