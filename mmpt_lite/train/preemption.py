"""Stopping a run on request: SIGTERM or SIGUSR1 -> checkpoint, marker file, exit status 75.

Schedulers announce preemption and time limits with a signal (SLURM: ``--signal``, then SIGTERM and,
after a grace period, SIGKILL). A rank that gets one only raises a flag; at the next step boundary all
ranks agree (a max-reduce of the flags, so a signal that reached one rank stops them all at the same
step), write a checkpoint together, and exit with :data:`PREEMPTED_EXIT`. Rank 0 also writes
``<output_dir>/preempted.json`` ({"step", "signal"}) for wrappers that only see a launcher's status
(torchrun reports any failed worker as 1). A relaunch with ``train.resume: auto`` continues from that
checkpoint and removes the marker.

A stop can also be asked for without a signal: a file ``<output_dir>/stop_requested`` (rank 0 looks for it at
every step boundary). The sbatch script uses it when SLURM's warning signal reaches the batch shell, so the
torchrun agents never see a signal and end quietly.
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
STOP_FILE = "stop_requested"  # touched by a wrapper (the sbatch script) to stop the run like a signal
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_FILE_REQUEST = 1000  # above every signal number: the stop file's code in the ranks' max-reduce


class Preempted(Exception):
    """Raised out of the training loop after the stop checkpoint is written."""

    def __init__(self, step: int, signame: str):
        super().__init__(f"stopped by {signame} at step {step}; checkpoint written, resume with the same command")
        self.step, self.signame = step, signame


class StopRequests:
    """Installs the SIGTERM / SIGUSR1 handlers of a rank and answers "should every rank stop now?"."""

    def __init__(self, stop_file: Path | None = None):
        self.received: int | None = lifetime.pending_stop()  # one that arrived while the rank was starting
        self.stop_file = stop_file  # read by rank 0 only: one stat per step on a shared filesystem
        self._previous = {}
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, _frame) -> None:
        self.received = signum  # only a flag: the loop acts at a step boundary, where state is consistent

    def agreed(self, device: torch.device) -> str | None:
        """The signal's name (or ``stop_requested``) when any rank was asked to stop; a collective: every rank
        calls it at each step boundary."""
        mine = float(self.received or 0)
        if not mine and self.stop_file is not None and mdist.get_rank() == 0 and self.stop_file.exists():
            mine = float(_FILE_REQUEST)
        if mdist.is_dist():
            flag = torch.tensor([mine], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            mine = float(flag.item())
        if not mine:
            return None
        return STOP_FILE if int(mine) == _FILE_REQUEST else signal.Signals(int(mine)).name

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


def clear_marker(out_dir: Path, started: float) -> None:
    """At a (re)start: the run goes on, so an old marker no longer applies, nor a stop request older than this
    process (``started``, a ``time.time()``); one made while the process was starting up still stands."""
    (Path(out_dir) / MARKER).unlink(missing_ok=True)
    stop_file = Path(out_dir) / STOP_FILE
    try:
        if stop_file.stat().st_mtime < started:
            stop_file.unlink(missing_ok=True)
    except FileNotFoundError:
        pass
