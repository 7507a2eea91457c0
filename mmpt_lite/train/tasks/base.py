"""What a training objective hands the shared trainer: a :class:`Task` and the run's :class:`Components`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from torch import nn

from mmpt_lite.data.batch import ClipBatch


class Task:
    """One objective's training step and the state a resumed run needs to continue exactly.

    ``step``: the (possibly DDP-wrapped) model and one batch -> ``{"loss": scalar tensor, "batch_size":
    int, ...}``; other scalar tensors are logged. ``modules``: trained with the model (e.g. a loss with a
    learnable temperature). ``state_dict``: saved in ``train_state.pt`` as "task", restored on resume.
    """

    def step(self, module: nn.Module, batch: ClipBatch) -> dict:
        raise NotImplementedError

    def modules(self) -> list[nn.Module]:
        return []

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@dataclass
class Components:
    """What a task builds for a run; the trainer, loader and loop are shared."""

    model: nn.Module  # the unwrapped model (checkpointed, evaluated)
    dataset: object  # indexed by (sample index, sample seed) as the TrainLoader's plan yields; collate -> ClipBatch
    task: Task
    eval_fn: Callable[[nn.Module], dict] | None = None
    flops_per_video: float = 0.0  # training FLOPs per video (3 x 2 x MACs) for MFU; 0 = not logged
    # epoch -> int64 [steps, world, batch] batch plan or None (the loader's shuffled plan); see TrainLoader
    plan_provider: Callable[[int], np.ndarray | None] | None = None
