"""Multi-view classification accuracy (Kinetics, SSv2) of a fine-tuned video classifier.

Each validation video is decoded once at its native rate with the short side resized to ``test_size``; it gives
``num_clips`` temporal views (dense windows, or TSN segment views for SSv2) × ``num_crops`` spatial crops along the
long side, uint8 ``[V, T, S, S, 3]`` with V = num_clips·num_crops (view ``c·num_crops + k`` = clip c, crop k). The
model maps ``video=float [B·V, 3, T, S, S]`` to ``{"logits": [B·V, C]}``; each view's logits go through a softmax
and the probabilities are averaged over the views of a video (VideoMAE / SlowFast testing).

A video that cannot be decoded is skipped on the first failure, named in ``unreadable`` and counted; the
accuracies are over the readable videos and the record says over how many of how many listed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmpt_lite.config import RunConfig, resolve_path
from mmpt_lite.data.classify_sets import (
    DATASETS,
    ClassifySet,
    default_list_path,
    dense_test_indices,
    read_classify_set,
    segment_test_indices,
    uniform_crops,
)
from mmpt_lite.data.video import SpatialTransform, read_all_frames, resolve_video_path
from mmpt_lite.evaluation import report
from mmpt_lite.evaluation.cache import files_fingerprint
from mmpt_lite.evaluation.features import VideoRequest
from mmpt_lite.evaluation.metrics import recall_curve
from mmpt_lite.evaluation.runtime import EvalRuntime, Evaluator
from mmpt_lite.fileio import file_sha256


@dataclass(frozen=True)
class ClassifyProtocol:
    """Test-time views. Defaults: VideoMAE's Kinetics ViT protocol (16 frames at stride 4, 5 clips × 3 crops, 224).

    sampling: "dense" (``num_frames`` frames ``stride`` apart, ``num_clips`` windows spread over the video) or
        "segments" (TSN: ``num_frames`` segments, ``num_clips`` views inside them; ``stride`` unused).
    num_crops: test_size² crops along the long side after resizing the short side to ``test_size``.
    """

    dataset: str = "kinetics"
    sampling: str = "dense"
    num_frames: int = 16
    stride: int = 4
    num_clips: int = 5
    num_crops: int = 3
    test_size: int = 224

    @property
    def num_views(self) -> int:
        return self.num_clips * self.num_crops


PROTOCOLS = {
    "kinetics_vit": ClassifyProtocol(),  # VideoMAE ViT on Kinetics-400: 5 clips × 3 crops
    "x3d": ClassifyProtocol(num_frames=13, stride=6, num_clips=10, test_size=182),  # X3D-S: 10 × 3 at 182
    "ssv2": ClassifyProtocol(dataset="ssv2", sampling="segments", num_frames=16, stride=1, num_clips=2),  # 2 × 3
}
DEFAULT_PROTOCOL = {"kinetics": "kinetics_vit", "ssv2": "ssv2"}


def classify_protocol(name: str = "kinetics_vit", **overrides) -> ClassifyProtocol:
    """A named preset (``PROTOCOLS``) with field overrides; ValueError for a bad name or value."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown classification protocol {name!r}; choose one of {sorted(PROTOCOLS)}")
    fields = {**PROTOCOLS[name].__dict__, **{k: v for k, v in overrides.items() if v is not None}}
    protocol = ClassifyProtocol(**fields)
    if protocol.dataset not in DATASETS:
        raise ValueError(f"--dataset must be one of {DATASETS}, got {protocol.dataset!r}")
    if protocol.sampling not in ("dense", "segments"):
        raise ValueError(f"sampling must be 'dense' or 'segments', got {protocol.sampling!r}")
    for flag in ("num_frames", "stride", "num_clips", "num_crops", "test_size"):
        if getattr(protocol, flag) < 1:
            raise ValueError(f"--{flag} must be at least 1, got {getattr(protocol, flag)}")
    return protocol


def protocol_from_run_config(cfg: RunConfig) -> ClassifyProtocol:
    """The test views of a classification run: its ``classify`` section (test_clips × test_crops at test_size,
    0 = data.video_size) with the training clip's frames (``data.num_frames``) and stride."""
    c = cfg.classify
    return classify_protocol(DEFAULT_PROTOCOL[c.dataset], dataset=c.dataset, sampling=c.resolved_sampling,
                             num_frames=cfg.data.num_frames, stride=c.sampling_stride, num_clips=c.resolved_test_clips,
                             num_crops=c.test_crops, test_size=c.test_size or cfg.data.video_size)


def temporal_views(total: int, protocol: ClassifyProtocol) -> np.ndarray:
    """Frame indices of the clips, int64 [num_clips, num_frames]."""
    if protocol.sampling == "segments":
        return segment_test_indices(total, protocol.num_frames, protocol.num_clips)
    return dense_test_indices(total, protocol.num_frames, protocol.stride, protocol.num_clips)


def decode_classify_views(request: VideoRequest, protocol: ClassifyProtocol, backend: str = "pyav") -> np.ndarray:
    """uint8 [num_clips·num_crops, T, S, S, 3] of one video (every frame decoded once, at the native rate)."""
    frames = read_all_frames(request.path, transform=SpatialTransform(short_side=protocol.test_size), backend=backend)
    if len(frames) == 0:
        raise ValueError(f"{request.path}: no frames decoded")
    views = [uniform_crops(frames[idx], protocol.test_size, protocol.num_crops)
             for idx in temporal_views(len(frames), protocol)]
    return np.concatenate(views)


def multiview_accuracy(scores: np.ndarray, labels: np.ndarray, num_classes: int | None = None) -> dict:
    """Accuracy of per-view logits, softmax per view then averaged over the views of each video.

    Args:
        scores: float [N, V, C] logits; labels: int [N] in [0, C).
    Returns (fractions in [0, 1]): top1, top5 (top-k with k = min(5, C), recorded as ``top5_k``),
    mean_class_accuracy (over the classes with at least one video), per_class_accuracy float [C] (NaN for classes
    without videos), confusion int64 [C, C] (rows = true class, columns = predicted), video_scores float [N, C]
    (the averaged probabilities), predicted int64 [N], ranks int64 [N] (0 = correct at top-1).
    Ties are broken by class index (the lower index ranks first), so top-1 agrees with argmax and the matrix.
    """
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels, np.int64)
    if scores.ndim != 3 or len(scores) != len(labels) or len(labels) == 0:
        raise ValueError(f"expected scores [N, V, C] and labels [N] with N > 0, got {scores.shape} and {labels.shape}")
    num_classes = num_classes or scores.shape[2]
    shifted = np.exp(scores - scores.max(axis=2, keepdims=True))
    probs = (shifted / shifted.sum(axis=2, keepdims=True)).mean(axis=1)
    true = probs[np.arange(len(labels)), labels][:, None]
    below = np.arange(probs.shape[1])[None] < labels[:, None]
    ranks = ((probs > true) | ((probs == true) & below)).sum(axis=1)
    predicted = probs.argmax(axis=1)
    confusion = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    counts = confusion.sum(axis=1)
    per_class = np.divide(np.diag(confusion), counts, out=np.full(num_classes, np.nan), where=counts > 0)
    k5 = min(5, probs.shape[1])
    return {"top1": float(np.mean(ranks < 1)), "top5": float(np.mean(ranks < k5)), "top5_k": k5,
            "mean_class_accuracy": float(np.nanmean(per_class)), "per_class_accuracy": per_class,
            "confusion": confusion, "video_scores": probs, "predicted": predicted.astype(np.int64),
            "ranks": ranks.astype(np.int64)}


class ClassifyEval(Evaluator):
    """Kinetics / SSv2 multi-view classification of a fine-tuned classifier (model output ``logits``)."""

    name = "classify"
    title = "Video classification (softmax averaged over clips × crops), accuracy"
    synthetic_folder = "kinetics"
    default_list = "val.txt"  # Kinetics; SSv2 reads validation.json (default_list_path)
    needs_text = False
    fps_help = "not used: classification views are read at the native frame rate"
    ylabel = "top-K accuracy"
    consequence = "left out of the accuracy"
    protocol_type = ClassifyProtocol
    decode_windows = staticmethod(decode_classify_views)
    feature_output = "logits"
    crop_description = "short side resized to test_size, num_crops test_size² crops along the long side"

    def __init__(self, protocol: ClassifyProtocol, video_root: str | Path, list_path: str | Path | None = None):
        if list_path is None:
            list_path = default_list_path(video_root, protocol.dataset, "val")
        super().__init__(protocol, video_root, list_path)

    # --------------------------------------------------------------- command line
    @classmethod
    def protocol_from_config(cls, e=None) -> ClassifyProtocol:
        """The run config's eval section holds the retrieval / probe protocol, not this one: the preset."""
        return cls.protocol_type()

    @classmethod
    def from_run_config(cls, cfg: RunConfig, video_root: str | Path, list_path: str | Path | None = None,
                        **options) -> ClassifyEval:
        """The evaluator with the views of the run's ``classify`` section (in-training evaluation)."""
        return cls(protocol_from_run_config(cfg), video_root, list_path, **options)

    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument("--dataset", choices=DATASETS, help="set format (default: the --protocol preset's)")
        parser.add_argument("--protocol", choices=sorted(PROTOCOLS),
                            help="preset views (default: kinetics_vit for kinetics, ssv2 for ssv2)")
        parser.add_argument("--sampling", choices=("dense", "segments"), help="temporal views: windows or TSN segments")
        parser.add_argument("--stride", type=int, help="frames between sampled frames of a dense clip")
        parser.add_argument("--num_clips", type=int, help="temporal views per video")
        parser.add_argument("--num_crops", type=int, help="spatial crops per clip (3: left/centre/right)")
        parser.add_argument("--test_size", type=int, help="short side after resizing = crop side")

    @classmethod
    def protocol_from_args(cls, args, run_cfg: RunConfig | None = None) -> tuple[ClassifyProtocol, str]:
        """Defaults from, in order: --protocol's preset, a classification run's ``classify`` section (--config or
        the checkpoint's), the --dataset's preset (kinetics_vit / ssv2); then each flag given replaces its field."""
        for flag in ("num_windows_test", "fps", "video_size"):
            if getattr(args, flag, None) is not None:
                raise ValueError(f"--{flag} does not apply to classify: use --num_clips, --num_crops, --test_size")
        if args.protocol is None and run_cfg is not None and run_cfg.train.task == "classify":
            base, source = protocol_from_run_config(run_cfg), "run config classify section"
        else:
            preset = args.protocol or DEFAULT_PROTOCOL[args.dataset or "kinetics"]
            base, source = PROTOCOLS[preset], f"{preset} preset"
        flags = {name: getattr(args, name) for name in ("dataset", "sampling", "num_frames", "stride", "num_clips",
                                                        "num_crops", "test_size")}
        protocol = classify_protocol(DEFAULT_PROTOCOL[base.dataset], **{
            **base.__dict__, **{name: value for name, value in flags.items() if value is not None}})
        return protocol, source

    @classmethod
    def default_video_root(cls, run_cfg: RunConfig | None, protocol: ClassifyProtocol) -> Path:
        """A classification run's ``classify.root`` (for its own dataset), else ``<data.root>/<dataset>``."""
        cfg = run_cfg or RunConfig()
        if cfg.train.task == "classify" and cfg.classify.root and cfg.classify.dataset == protocol.dataset:
            return resolve_path(cfg.classify.root)
        return resolve_path(cfg.data.root) / protocol.dataset

    @classmethod
    def default_list_path(cls, video_root: Path, protocol: ClassifyProtocol) -> Path:
        return default_list_path(video_root, protocol.dataset, "val")

    # --------------------------------------------------------------- evaluation
    def read(self) -> ClassifySet:
        return read_classify_set(self.video_root, self.protocol.dataset, "val", self.list_path)

    def cache_parts(self, requests: list[VideoRequest]) -> dict:
        return {"list": file_sha256(self.list_path), "videos": self.dataset.videos,
                "fingerprint": files_fingerprint([Path(r.path) for r in requests])}

    def evaluate(self, model: torch.nn.Module, runtime: EvalRuntime, checkpoint_id: str | None = None):
        """(JSON record, table row in %, {"": top-K curve}) of ``model`` (on ``runtime.device``)."""
        data = self.dataset
        requests = [VideoRequest(v, resolve_video_path(self.video_root / v)) for v in data.videos]
        found, cached = self.window_features(model, runtime, requests, checkpoint_id)
        ok = found.readable
        if not ok.any():
            first = next(iter(found.errors.items()), ("", "no video listed"))
            raise ValueError(f"no {data.name} video could be decoded (first: {first[0]}: {first[1]})")
        logits = found.features[ok]
        if logits.shape[-1] != len(data.classes):
            raise ValueError(f"the model gives {logits.shape[-1]} logits, the set has {len(data.classes)} classes")
        m = multiview_accuracy(logits, data.labels[ok], len(data.classes))
        evaluated, listed = int(ok.sum()), len(data.videos)
        record = {"dataset": data.name, "top1": 100 * m["top1"], "top5": 100 * m["top5"], "top5_k": m["top5_k"],
                  "mean_class_accuracy": 100 * m["mean_class_accuracy"],
                  "accuracy_over": f"accuracy over {evaluated} of {listed} videos",
                  "per_class_accuracy": dict(zip(data.classes, 100 * m["per_class_accuracy"], strict=True)),
                  "confusion_matrix": m["confusion"], "classes": data.classes, "num_classes": len(data.classes),
                  "num_views": self.protocol.num_views, "num_listed": listed, "num_evaluated": evaluated,
                  "num_unreadable": len(found.errors), "unreadable": found.errors,
                  "duplicates": data.duplicates, "from_cache": cached}
        row = {"top1": record["top1"], "top5": record["top5"], "mean_class": record["mean_class_accuracy"],
               "videos": f"{evaluated}/{listed}"}
        return record, row, {"": recall_curve(m["ranks"], len(data.classes))}

    def columns(self) -> list[str]:
        return ["top1", "top5", "mean_class", "videos"]

    def heading(self, records: dict[str, dict]) -> str:
        first = next(iter(records.values()), {})
        p = self.protocol
        return (f"{p.dataset} classification (%), {p.num_clips} clips × {p.num_crops} crops at {p.test_size}, "
                f"{first.get('accuracy_over', '')}")

    def write_figures(self, base_path: str | Path, records: dict[str, dict]) -> list[Path]:
        """One confusion-matrix PNG per model: ``<base>_confusion[_<model>].png``."""
        base, paths = Path(base_path), []
        for name, record in records.items():
            suffix = "" if len(records) == 1 else "_" + re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")
            path = base.with_name(f"{base.stem}_confusion{suffix}.png")
            report.plot_confusion(path, np.asarray(record["confusion_matrix"]), record["classes"],
                                  title=f"{self.protocol.dataset} confusion, {name}\n({record['accuracy_over']})")
            paths.append(path)
        return paths

