"""What a training objective hands the shared trainer: a :class:`Task` and the run's :class:`Components`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from torch import nn

from mmpt_lite.data.batch import ClipBatch


class Task(Protocol):
    """One objective's training step and the state a resumed run needs to continue exactly.

    ``step`` takes the (possibly DDP-wrapped) model and one :class:`ClipBatch` and returns
    ``{"loss": scalar tensor, "batch_size": int, ...}``; other scalar tensors are logged. ``modules``
    are trained with the model (e.g. a loss with a learnable temperature). ``state_dict`` is saved
    in ``train_state.pt`` under "task" and given back to ``load_state_dict`` on resume.
    """

    def step(self, module: nn.Module, batch: ClipBatch) -> dict: ...

    def modules(self) -> list[nn.Module]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


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

