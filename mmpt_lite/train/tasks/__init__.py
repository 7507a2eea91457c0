"""Training objectives, one module each, chosen by ``train.task`` through :data:`TASKS`.

Both the launcher and ``train/main.py`` dispatch through :func:`get_task`. A task module provides:

* ``describe(cfg) -> str``: its model and loss for the run's first line;
* ``prepare(cfg, *, build) -> prepared``: its inputs made to exist (called once by the launcher before
  any rank starts, then by every rank; only ``build=True`` builds). ``prepared.cfg`` has the derived
  paths filled in; ``prepared.name``, ``num_videos`` and ``shard_root`` are logged;
* ``build(cfg, prepared, device) -> Components``: model, dataset, its :class:`~.base.Task` (step,
  trainable modules, resumable state), and optionally an evaluation and a batch-plan provider.

Adding an objective:

1. Write ``mmpt_lite/train/tasks/<name>.py`` with ``describe``, ``prepare`` and ``build`` as above.
2. Its Task's ``step(module, batch)`` reads a ``ClipBatch`` (``mmpt_lite.data.batch``) and returns
   ``{"loss", "batch_size", ...scalars to log}``; ``state_dict()`` holds whatever a resume must restore.
3. Its dataset yields sample dicts that ``collate`` stacks (``video``, ``video_index``, optional ``text``).
4. Add ``"<name>": "mmpt_lite.train.tasks.<name>"`` to ``TASKS`` below.
5. Run it: ``python locallaunch.py projects/debug_tiny.yaml --set train.task=<name>``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from mmpt_lite.config import ConfigError

# train.task -> the module implementing it. Imported on use: the launcher's --dryrun needs no torch.
TASKS = {
    "milnce": "mmpt_lite.train.tasks.contrastive",  # video-text MIL-NCE or InfoNCE (loss.name)
    "mae": "mmpt_lite.train.tasks.masked",  # masked video pretraining (VideoMAE)
}


def get_task(name: str) -> ModuleType:
    """The task module of ``train.task``; a ConfigError listing the valid names for an unknown one."""
    if name not in TASKS:
        raise ConfigError(f"train.task: {name!r} is not one of {', '.join(map(repr, TASKS))}")
    return importlib.import_module(TASKS[name])
