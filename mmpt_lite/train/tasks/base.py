"""What a training objective hands the shared trainer: a :class:`Task` and the run's :class:`Components`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mmpt_lite.data.batch import ClipBatch


class StepSeeds:
    """Per-micro-batch randomness drawn on the training side (masks, mixup): one generator per draw, seeded by
    (train.seed, rank, count). The count is part of the task's state in ``train_state.pt``, so a resumed run
    draws what an uninterrupted run would have drawn."""

    def __init__(self, seed: int, rank: int):
        self.seed, self.rank, self.drawn = seed, rank, 0
        self._generators: dict[torch.device, torch.Generator] = {}

    def next_generator(self, device: torch.device) -> torch.Generator:
        generator = self._generators.setdefault(device, torch.Generator(device))
        state = np.random.SeedSequence([self.seed, self.rank, self.drawn]).generate_state(1, np.uint64)[0]
        self.drawn += 1
        return generator.manual_seed(int(state))

    def next_numpy(self) -> np.random.Generator:
        """The next draw as a numpy Generator (host-side choices such as a mixing coefficient)."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.rank, self.drawn]))
        self.drawn += 1
        return rng

    def state_dict(self) -> dict:
        return {"drawn": self.drawn}

    def load_state_dict(self, state: dict) -> None:
        self.drawn = int(state["drawn"])


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


class SeededTask(Task):
    """A task whose only resumable state is its :class:`StepSeeds` (``self.seeds``): masks, token draws, mixup."""

    seeds: StepSeeds

    def state_dict(self) -> dict:
        return self.seeds.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.seeds.load_state_dict(state)


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
