"""How long a run's processes live, and who may write its folder.

Three promises, each with its mechanism:

* **One run per folder.** The launcher (or, for a run started by ``torchrun``/``srun`` directly, rank 0)
  holds an exclusive ``flock`` on ``<output_dir>/.run.lock`` for the whole run and writes its pid and
  command line into the file. A second launch on the same folder fails at once, naming that process.
  The kernel drops the lock when the holder dies, however it dies, so a lock is never stale.
* **No orphans.** torchrun starts every rank in a session of its own, so killing the launcher's process
  group leaves the ranks (and their loader workers) running. Each rank therefore runs a watchdog thread
  that polls the launcher's pid (``MMPT_LITE_LAUNCHER_PID``) and its own parent; when either is gone it
  SIGKILLs its own process group (itself and its loader workers). The launcher also asks the kernel to
  SIGKILL the torchrun agent when the launcher dies (``PR_SET_PDEATHSIG``).
* **Orphans never race a resume.** Every rank holds a shared ``flock`` on ``<output_dir>/.ranks.lock``
  while it runs. A new launcher, once it owns ``.run.lock``, waits for an exclusive lock on
  ``.ranks.lock``: it gets it only when no rank of an earlier run is left.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

RUN_LOCK = ".run.lock"
RANKS_LOCK = ".ranks.lock"
LAUNCHER_PID_ENV = "MMPT_LITE_LAUNCHER_PID"  # set by the launcher for the processes it starts
RUN_DIR_ENV = "MMPT_LITE_RUN_DIR"            # the run folder, so a process of a run can be found from outside
LOCK_HELD_ENV = "MMPT_LITE_RUN_LOCKED"       # the run folder whose .run.lock an ancestor already holds
_PR_SET_PDEATHSIG = 1
# About when this process started (ranks import this module first): a stop request made later, while the
# process was still starting up, is not taken for a stale one.
PROCESS_STARTED = time.time()


class RunFolderBusy(RuntimeError):
    """Another live process owns the run folder; the message names it."""


def _holders(path: Path) -> list[int]:
    """Pids holding a flock on ``path`` (from /proc/locks; empty where that is unavailable)."""
    try:
        st = path.stat()
        text = Path("/proc/locks").read_text()
    except OSError:
        return []
    pids = []
    for line in text.splitlines():
        # "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"
        if "->" in line:  # a process still waiting for the lock, not holding it
            continue
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue
        dev_ino = fields[5].split(":")
        if len(dev_ino) == 3 and int(dev_ino[2]) == st.st_ino and \
                (int(dev_ino[0], 16), int(dev_ino[1], 16)) == (os.major(st.st_dev), os.minor(st.st_dev)):
            pids.append(int(fields[4]))
    return sorted(set(pids))


def _command_line(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)


class RunLock:
    """The exclusive owner lock of a run folder; released by :meth:`release` or by the process's death."""

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / RUN_LOCK
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunFolderBusy(f"{self.run_dir} is in use by another run ({self._describe_holder()}); "
                                "wait for it to finish or stop it, then launch again") from None
        holder = {"pid": os.getpid(), "command": _command_line(os.getpid()),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        self._fd = fd
        return self

    def _describe_holder(self) -> str:
        try:
            holder = json.loads(self.path.read_text() or "{}")
        except (OSError, json.JSONDecodeError):
            holder = {}
        pids = _holders(self.path)
        pid = holder.get("pid") if holder.get("pid") in pids or not pids else pids[0]
        if pid is None:
            return "a process that holds its lock"
        command = holder.get("command") if pid == holder.get("pid") else _command_line(pid)
        since = f", since {holder['started']}" if pid == holder.get("pid") and holder.get("started") else ""
        return f"pid {pid}: {command}{since}"

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def wait_for_previous_ranks(run_dir: str | os.PathLike, timeout_s: float = 30.0) -> None:
    """Block until no rank of an earlier run of ``run_dir`` is alive (RunFolderBusy after ``timeout_s``).

    Ranks of a killed launcher notice within a second (their watchdog), so the wait is normally short.
    """
    path = Path(run_dir) / RANKS_LOCK
    if not path.exists():
        return
    fd = os.open(path, os.O_RDWR)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pids = _holders(path)
                    names = "; ".join(f"pid {p}: {_command_line(p)}" for p in pids) or "unknown pids"
                    raise RunFolderBusy(f"{run_dir}: processes of an earlier run are still alive after "
                                        f"{timeout_s:.0f} s ({names})") from None
                time.sleep(0.1)
    finally:
        os.close(fd)  # the exclusive lock was only a probe


def hold_rank_lock(run_dir: str | os.PathLike) -> int:
    """Take the shared ``.ranks.lock`` for this rank's lifetime; returns the descriptor (kept open)."""
    path = Path(run_dir)
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / RANKS_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_SH)  # only blocks while a new launcher probes for leftovers (an instant)
    return fd


_pending_stop: int | None = None


def defer_stop_signals() -> None:
    """Remember SIGTERM / SIGUSR1 instead of dying of them, until the trainer's own handlers take over.

    A rank spends seconds importing torch before it can act on a stop request; a scheduler's signal in that
    window would otherwise kill it without a checkpoint (and make torchrun report a failure).
    """
    def remember(signum, _frame):
        global _pending_stop
        _pending_stop = signum

    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, remember)


def pending_stop() -> int | None:
    """The stop signal received while :func:`defer_stop_signals` was in charge, if any."""
    return _pending_stop


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it is dead for our purpose.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def _die() -> None:
    """SIGKILL this process's group when we lead it (a torchrun rank: itself and its loader workers)."""
    sys.stderr.write(f"mmpt_lite: the launcher of this run is gone; rank process {os.getpid()} exits\n")
    sys.stderr.flush()
    if os.getpgid(0) == os.getpid():
        os.killpg(os.getpid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def start_orphan_watchdog(poll_s: float = 0.5) -> threading.Thread | None:
    """In a rank started by torchrun or srun: exit when the launcher or the parent process dies.

    Watches ``MMPT_LITE_LAUNCHER_PID`` when set and always the parent (torchrun's agent, or srun's step
    daemon): a parent that dies reparents this process, which changes ``os.getppid()``. A launcher that
    is already gone when the rank starts (killed during start-up) ends the rank at once.
    """
    launcher = int(os.environ.get(LAUNCHER_PID_ENV, "0") or 0)
    parent = os.getppid()
    if (launcher and not pid_alive(launcher)) or parent == 1:
        _die()

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent or (launcher and not pid_alive(launcher)):
                _die()

    thread = threading.Thread(target=watch, name="mmpt-orphan-watchdog", daemon=True)
    thread.start()
    return thread


def die_with_parent() -> None:
    """``preexec_fn`` for a child of the launcher: the kernel SIGKILLs it when the launcher dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc/<pid>/task/*/children)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return sorted(set(found))


def run_processes(run_dir: str | os.PathLike) -> list[int]:
    """Pids of live processes started for ``run_dir`` (found by their ``MMPT_LITE_RUN_DIR``)."""
    want = f"{RUN_DIR_ENV}={Path(run_dir).resolve()}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if want in env.split(b"\0") and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return sorted(found)
