"""Training objectives, one module each, chosen by ``train.task`` through :data:`TASKS`; the launcher and
``train/main.py`` both dispatch through :func:`get_task`, and the trainer and loop are shared.

Adding an objective:

1. Write ``mmpt_lite/train/tasks/<name>.py`` with ``describe(cfg) -> str`` (its model for the run's first
   line), ``prepare(cfg, *, build) -> PreparedData`` (its inputs; called once with build=True by the launcher
   before any rank starts, then by every rank) and ``build(cfg, prepared, device) -> Components`` (base.py).
2. Subclass ``base.Task``: ``step(module, batch) -> {"loss", "batch_size", ...scalars to log}`` on a
   ``ClipBatch``; ``state_dict``/``load_state_dict`` for what a resume restores; ``modules`` if trainable.
3. Its dataset maps ``(index, seed)`` to a sample dict that ``data.batch.collate`` stacks.
4. Add ``"<name>": "mmpt_lite.train.tasks.<name>"`` to ``TASKS`` below.
5. Try it: ``python locallaunch.py projects/debug_tiny.yaml --set train.task=<name> --set train.max_steps=3``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from mmpt_lite.config import ConfigError

# train.task -> the module implementing it. Imported on use: the launcher's --dryrun needs no torch.
TASKS = {
    "milnce": "mmpt_lite.train.tasks.contrastive",  # video-text MIL-NCE or InfoNCE (loss.name)
    "mae": "mmpt_lite.train.tasks.masked",  # masked video pretraining (VideoMAE)
    "umt": "mmpt_lite.train.tasks.umt",  # UMT stage 1: a frozen image teacher's features on the tokens it attends to
    "classify": "mmpt_lite.train.tasks.classify",  # classification fine-tuning (Kinetics / SSv2 formats)
}


def get_task(name: str) -> ModuleType:
    """The task module of ``train.task``; a ConfigError listing the valid names for an unknown one."""
    if name not in TASKS:
        raise ConfigError(f"train.task: {name!r} is not one of {', '.join(map(repr, TASKS))}")
    return importlib.import_module(TASKS[name])
