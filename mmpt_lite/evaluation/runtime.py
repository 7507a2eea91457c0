"""What every evaluator shares: the runtime it runs with and the base class of the per-task evaluators."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from mmpt_lite.config import DataConfig, RunConfig
from mmpt_lite.evaluation.cache import FeatureCache

DECODERS = typing.get_args(typing.get_type_hints(DataConfig)["decoder"])


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


class Evaluator:
    """One evaluation task: its eval set (``read()`` at construction), its protocol and ``run``.

    Subclasses also define ``protocol_from_config(eval_cfg or None)`` (None: the published protocol),
    ``evaluate(model, runtime, checkpoint_id) -> (JSON record, table row, {curve label suffix: (ks, values)})``
    and ``columns()``; see the package docstring for the recipe.
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
