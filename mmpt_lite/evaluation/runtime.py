"""What every evaluator shares: the runtime it runs with and the base class of the per-task evaluators."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from mmpt_lite.config import DataConfig, EvalConfig, RunConfig
from mmpt_lite.evaluation.cache import FeatureCache

DECODERS = typing.get_args(typing.get_type_hints(DataConfig)["decoder"])


@dataclass
class EvalRuntime:
    """How to run an evaluation, as opposed to what it measures (the protocol): changing these never
    changes a number, except ``decoder``, which is part of the feature cache key for that reason.

    Attributes:
        batch_size: videos per forward pass (each contributes num_windows windows).
        num_workers: decode worker processes (0 = decode in this process).
        cache: extracted-feature cache; used only for models with a checkpoint id.
        decoder: video decoder backend of read_clip / read_all_frames (``data.decoder``).
    """

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
    """One evaluation task: its eval set (read when constructed), its protocol and ``run``.

    Subclasses set the class attributes and implement ``read``, ``protocol_from_config``, ``evaluate``
    and the report hooks; see the package docstring for the recipe.
    """

    name: ClassVar[str]  # the key in cli.EVALUATORS and in the JSON's "task"
    title: ClassVar[str]
    synthetic_folder: ClassVar[str]  # the eval set under data.root when no --eval_video_root is given
    default_list: ClassVar[str]  # list file (or folder) inside the video root
    list_is_folder: ClassVar[bool] = False
    needs_text: ClassVar[bool] = True  # False: a video encoder alone can be evaluated
    fps_help: ClassVar[str] = "decoding rate of each window"
    ylabel: ClassVar[str]  # of the curve plot
    consequence: ClassVar[str]  # what happens to a video that cannot be read

    def __init__(self, protocol, video_root: str | Path, list_path: str | Path | None = None):
        self.protocol = protocol
        self.video_root = Path(video_root)
        self.list_path = Path(list_path) if list_path is not None else self.video_root / self.default_list
        self.dataset = self.read()

    @classmethod
    def from_run_config(cls, cfg: RunConfig, video_root: str | Path, list_path: str | Path | None = None,
                        **options) -> Evaluator:
        """The evaluator with the protocol of ``cfg.eval`` (as a training run evaluates)."""
        return cls(cls.protocol_from_config(cfg.eval), video_root, list_path, **options)

    @classmethod
    def protocol_from_config(cls, eval_cfg: EvalConfig | None):
        """The protocol of a run config's eval section; the published protocol for None."""
        raise NotImplementedError

    @classmethod
    def add_arguments(cls, parser) -> None:
        """Flags of this task only."""

    @classmethod
    def options(cls, args) -> dict:
        """Constructor keywords from this task's flags."""
        return {}

    def read(self):
        """The eval set from ``video_root`` and ``list_path``."""
        raise NotImplementedError

    def evaluate(self, model: torch.nn.Module, runtime: EvalRuntime, checkpoint_id: str | None = None):
        """(JSON record, table row, curves {label: (ks, values)}); the model is left in the mode it was in."""
        raise NotImplementedError

    def run(self, model: torch.nn.Module, runtime: EvalRuntime) -> dict:
        """The metrics of ``model`` (already on ``runtime.device``)."""
        return self.evaluate(model, runtime)[0]

    def columns(self) -> list[str]:
        raise NotImplementedError

    def heading(self, records: dict[str, dict]) -> str:
        return self.title


def in_eval_mode(compute):
    """Run ``compute(model, ...)`` in eval mode under no_grad and put the model back in its mode."""
    def wrapper(self, model: torch.nn.Module, *args, **kwargs):
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return compute(self, model, *args, **kwargs)
        finally:
            model.train(was_training)
    return wrapper
