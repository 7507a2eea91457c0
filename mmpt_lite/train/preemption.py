"""Stopping a run on request: SIGTERM or SIGUSR1 -> checkpoint, marker file, exit status 75.

Schedulers announce preemption and time limits with a signal (SLURM: ``--signal``, then SIGTERM and,
after a grace period, SIGKILL). A rank that gets one only raises a flag; at the next step boundary all
ranks agree (a max-reduce of the flags, so a signal that reached one rank stops them all at the same
step), write a checkpoint together, and exit with :data:`PREEMPTED_EXIT`. Rank 0 also writes
``<output_dir>/preempted.json`` ({"step", "signal"}) for wrappers that only see a launcher's status
(torchrun reports any failed worker as 1). A relaunch with ``train.resume: auto`` continues from that
checkpoint and removes the marker.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import torch
import torch.distributed as dist

from mmpt_lite import distributed as mdist
from mmpt_lite import lifetime
from mmpt_lite.fileio import atomic_write_text

PREEMPTED_EXIT = 75  # EX_TEMPFAIL: "try again later", the status an sbatch script maps to a requeue
MARKER = "preempted.json"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):
    """Raised out of the training loop after the stop checkpoint is written."""

    def __init__(self, step: int, signame: str):
        super().__init__(f"stopped by {signame} at step {step}; checkpoint written, resume with the same command")
        self.step, self.signame = step, signame


class StopRequests:
    """Installs the SIGTERM / SIGUSR1 handlers of a rank and answers "should every rank stop now?"."""

    def __init__(self):
        self.received: int | None = lifetime.pending_stop()  # one that arrived while the rank was starting
        self._previous = {}
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, _frame) -> None:
        self.received = signum  # only a flag: the loop acts at a step boundary, where state is consistent

    def agreed(self, device: torch.device) -> str | None:
        """The signal's name when any rank received one (a collective: every rank calls it each step)."""
        mine = float(self.received or 0)
        if mdist.is_dist():
            flag = torch.tensor([mine], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            mine = float(flag.item())
        return signal.Signals(int(mine)).name if mine else None

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def write_marker(out_dir: Path, step: int, signame: str) -> None:
    atomic_write_text(Path(out_dir) / MARKER, json.dumps({"step": step, "signal": signame}) + "\n")


def read_marker(out_dir: Path) -> dict | None:
    try:
        return json.loads((Path(out_dir) / MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def clear_marker(out_dir: Path) -> None:
    (Path(out_dir) / MARKER).unlink(missing_ok=True)
