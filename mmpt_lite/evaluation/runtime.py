"""What every evaluator shares: the runtime it runs with and the base class of the per-task evaluators."""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from mmpt_lite.config import DataConfig, EvalConfig, RunConfig, resolve_path
from mmpt_lite.evaluation.cache import FeatureCache, cache_key
from mmpt_lite.evaluation.features import VideoRequest, WindowFeatures, extract_window_features

DECODERS = typing.get_args(typing.get_type_hints(DataConfig)["decoder"])
# flag -> protocol field, for the command-line flags that override a windowed protocol
PROTOCOL_FLAGS = {"num_windows_test": "num_windows", "num_frames": "num_frames", "fps": "fps",
                  "video_size": "video_size"}


@dataclass
class EvalRuntime:
    """How an evaluation runs, as opposed to what it measures (the protocol). ``batch_size``: videos per
    forward pass; ``num_workers``: decode processes (0 = in process); ``cache``: used only for models with a
    checkpoint id; ``decoder``: read_clip's backend (part of the cache key: backends may differ in pixels)."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    batch_size: int = 16
    num_workers: int = 0
    cache: FeatureCache = field(default_factory=lambda: FeatureCache(None))
    progress: bool = False
    decoder: str = "pyav"

    @classmethod
    def for_training(cls, cfg: RunConfig, device: torch.device | str) -> EvalRuntime:
        """In-training evaluation: the run's eval batch size and decoder, no cache (weights change), no bar."""
        return cls(torch.device(device), cfg.eval.batch_size, decoder=cfg.data.decoder)


def in_eval_mode(compute):
    """Method decorator: ``compute(self, model, ...)`` in eval mode under no_grad, the model's mode restored."""
    def wrapper(self, model: torch.nn.Module, *args, **kwargs):
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return compute(self, model, *args, **kwargs)
        finally:
            model.train(was_training)
    return wrapper


class Evaluator:
    """One evaluation task: its eval set (``read()`` at construction), its protocol and ``run``.

    Subclasses also define ``evaluate(model, runtime, checkpoint_id) -> (JSON record, table row,
    {curve label suffix: (ks, values)})``, ``columns()`` and ``cache_parts(requests)``; see the package
    docstring for the recipe.
    """

    name: ClassVar[str]  # the key in cli.EVALUATORS and the JSON's "task"
    title: ClassVar[str]
    synthetic_folder: ClassVar[str]  # the eval set under data.root when no --eval_video_root is given
    default_list: ClassVar[str]  # list file (or folder) inside the video root
    list_is_folder: ClassVar[bool] = False
    needs_text: ClassVar[bool] = True  # False: a video encoder alone can be evaluated
    fps_help: ClassVar[str] = "decoding rate of each window"
    ylabel: ClassVar[str]  # of the curve plot
    consequence: ClassVar[str]  # what happens to a video that cannot be read
    protocol_type: ClassVar[type]  # the protocol dataclass; its defaults are the published protocol
    fps_setting: ClassVar[str] = "fps"  # the EvalConfig field that sets the protocol's fps
    decode_windows: ClassVar[Callable]  # (request, protocol, backend) -> uint8 [W, T, S, S, 3]
    feature_output: ClassVar[str]  # extract_window_features' output: "video_embedding", "probe" or "logits"
    crop_description: ClassVar[str] = "centre min(w,h) square, resized"  # for the JSON record's protocol

    def __init__(self, protocol, video_root: str | Path, list_path: str | Path | None = None):
        self.protocol, self.video_root = protocol, Path(video_root)
        self.list_path = Path(list_path) if list_path is not None else self.video_root / self.default_list
        self.dataset = self.read()

    @classmethod
    def from_run_config(cls, cfg: RunConfig, video_root: str | Path, list_path: str | Path | None = None,
                        **options) -> Evaluator:
        """The evaluator with the protocol of ``cfg.eval``, as a training run evaluates."""
        return cls(cls.protocol_from_config(cfg.eval), video_root, list_path, **options)

    @classmethod
    def protocol_from_config(cls, e: EvalConfig | None):
        """The protocol of a run config's eval section; None: the published protocol."""
        if e is None:
            return cls.protocol_type()
        return cls.protocol_type(num_windows=e.num_windows_test, num_frames=e.num_frames,
                                 fps=getattr(e, cls.fps_setting), video_size=e.video_size)

    @classmethod
    def protocol_from_args(cls, args, run_cfg: RunConfig | None) -> tuple[object, str]:
        """(protocol, where its defaults came from) for the command line: ``run_cfg``'s eval section (or the
        published protocol) overridden by the windowed-protocol flags; ValueError names a bad flag."""
        e = run_cfg.eval if run_cfg is not None else None
        protocol = cls.protocol_from_config(e)
        source = "run config eval section" if e is not None else "published MIL-NCE protocol"
        protocol = dataclasses.replace(protocol, **{field: getattr(args, flag) for flag, field in PROTOCOL_FLAGS.items()
                                                    if getattr(args, flag) is not None})
        for flag, value in (("num_windows_test", protocol.num_windows), ("num_frames", protocol.num_frames),
                            ("video_size", protocol.video_size)):
            if value < 1:
                raise ValueError(f"--{flag} must be at least 1, got {value}")
        native = cls.protocol_from_config(None).fps == 0  # the published protocol decodes at native rate
        if protocol.fps < 0 or (protocol.fps == 0 and not native):
            raise ValueError(f"--fps must be positive{' (or 0 = native)' if native else ''}, got {protocol.fps}")
        return protocol, source

    @classmethod
    def default_video_root(cls, run_cfg: RunConfig | None, protocol) -> Path:
        """The eval set's folder when no --eval_video_root is given: ``synthetic_folder`` under ``data.root``."""
        return resolve_path((run_cfg or RunConfig()).data.root) / cls.synthetic_folder

    @classmethod
    def default_list_path(cls, video_root: Path, protocol) -> Path:
        """The list file (or folder) read when no --eval_csv is given."""
        return video_root / cls.default_list

    def write_figures(self, base_path: str | Path, records: dict[str, dict]) -> list[Path]:
        """Figures beyond the curve plot (e.g. a confusion matrix), written beside ``base_path``; their paths."""
        return []

    @classmethod
    def add_arguments(cls, parser) -> None:
        """This task's own flags (none by default); ``options(args)`` turns them into constructor keywords."""

    @classmethod
    def options(cls, args) -> dict:
        return {}

    def run(self, model: torch.nn.Module, runtime: EvalRuntime) -> dict:
        """The metrics of ``model`` (already on ``runtime.device``)."""
        return self.evaluate(model, runtime)[0]

    def heading(self, records: dict[str, dict]) -> str:
        return self.title

    @in_eval_mode
    def window_features(self, model: torch.nn.Module, runtime: EvalRuntime, requests: Sequence[VideoRequest],
                        checkpoint_id: str | None = None) -> tuple[WindowFeatures, bool]:
        """Window features of ``requests`` (see :func:`extract_window_features`) and whether they came from
        ``runtime.cache``, which is used only with a ``checkpoint_id`` (a model being trained has none).

        The cache key is the task, checkpoint and protocol plus ``cache_parts(requests)``: the eval lists
        and video fingerprints.
        """
        key = None
        if checkpoint_id is not None:
            parts = {"task": self.name, "checkpoint": checkpoint_id, "protocol": asdict(self.protocol),
                     **self.cache_parts(requests)}
            # pyav, the default, stays out of the key: caches of pyav-decoded features keep their keys.
            key = cache_key(parts if runtime.decoder == "pyav" else {**parts, "decoder": runtime.decoder})
            hit = runtime.cache.load(key)
            if hit is not None:
                errors = dict(zip(hit["error_names"].tolist(), hit["error_messages"].tolist(), strict=True))
                return WindowFeatures(hit["features"], hit["readable"], errors), True
        decode = functools.partial(self.decode_windows, protocol=self.protocol, backend=runtime.decoder)
        found = extract_window_features(model, requests, decode, output=self.feature_output,
                                        batch_size=runtime.batch_size, num_workers=runtime.num_workers,
                                        device=runtime.device, progress=runtime.progress, desc=f"{self.name} videos")
        if key is not None:
            runtime.cache.save(key, {"features": found.features, "readable": found.readable,
                                     "error_names": np.array(list(found.errors), dtype=str),
                                     "error_messages": np.array(list(found.errors.values()), dtype=str)})
        return found, False
