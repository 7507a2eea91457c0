"""What a run promises under failure, tried the way a user or a scheduler does it: ``kill -9`` of the whole
process group of a 2-rank run with loader workers (ten times in a row, resuming in between), SIGTERM,
the launcher dying during start-up, and two launches on one run folder. docs/reliability.md gives the
figures; ``python -m pytest tests/test_reliability.py -s`` prints them."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mmpt_lite import lifetime
from mmpt_lite.checkpoint import latest_checkpoint

REPO = Path(__file__).resolve().parents[1]
STEPS = 120  # long enough that ten kills, each a few steps after a checkpoint, land before the end on a fast machine
GONE_WITHIN_S = 5.0  # how long a run's processes may outlive a killed launcher


def launch(data: Path, out: Path, *extra: str, jobtype: str = "local_small") -> subprocess.Popen:
    """The real launcher in a process group of its own (so the test can kill the group, as a shell would)."""
    cmd = [sys.executable, "locallaunch.py", "projects/debug_tiny.yaml", "--jobtype", jobtype]
    for o in [f"data.root={data}", f"train.output_dir={out}", f"train.max_steps={STEPS}", "train.ckpt_every=2",
              "train.keep_last=2", "data.num_workers=2", *extra]:
        cmd += ["--set", o]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def latest_step(out: Path) -> int:
    ck = latest_checkpoint(out) if out.is_dir() else None
    return int(ck.name.split("_")[1]) if ck is not None else -1


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def kill_group(proc: subprocess.Popen, out: Path) -> float:
    """``kill -9`` the launcher's process group; seconds from the kill until no process of the run is alive.

    Timed from the kill itself: the ranks share the launcher's stdout pipe, so reading the launcher's output
    to the end already waits for them."""
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    gone = seconds_until_gone(out, t0=t0)
    proc.communicate()
    return gone


def seconds_until_gone(out: Path, limit: float = 60.0, t0: float | None = None) -> float:
    """Seconds (from ``t0``, default now) until no process started for run folder ``out`` is alive."""
    t0 = time.monotonic() if t0 is None else t0
    while lifetime.run_processes(out):
        if time.monotonic() - t0 > limit:
            return limit
        time.sleep(0.05)
    return time.monotonic() - t0


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(latest_checkpoint(out) / "model.safetensors"))


def assert_same_weights(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs: {what}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The tiny corpus (generated once) and an uninterrupted 2-rank run with two loader workers per rank."""
    root = tmp_path_factory.mktemp("reliability")
    data, out = root / "how2-synth", root / "reference"
    code, log = finish(launch(data, out))
    assert code == 0, log[-3000:]
    assert latest_step(out) == STEPS
    return data, weights(out)


def test_sigterm_writes_a_checkpoint_exits_cleanly_and_resumes_exactly(reference, tmp_path):
    data, ref = reference
    out = tmp_path / "run"
    proc = launch(data, out)
    wait_for(lambda: latest_step(out) >= 2, 300, "the first checkpoint")
    proc.send_signal(signal.SIGTERM)  # what a scheduler sends before preemption or at the time limit
    t0 = time.monotonic()
    code, log = finish(proc, timeout=120)
    stop_s = time.monotonic() - t0
    assert code == 75, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    marker = json.loads((out / "preempted.json").read_text())
    assert marker["signal"] == "SIGTERM" and marker["step"] == latest_step(out) < STEPS
    assert seconds_until_gone(out) < GONE_WITHIN_S
    code, log = finish(launch(data, out))
    assert code == 0, log[-3000:]
    assert f"(step {marker['step']}," in log and not (out / "preempted.json").exists()
    assert_same_weights(ref, weights(out), f"after SIGTERM at step {marker['step']} and a resume")
    print(f"\nSIGTERM: checkpoint at step {marker['step']} and exit 75 {stop_s:.1f} s after the signal; "
          "resumed run bit-identical")


@pytest.mark.slow
def test_ten_kill9_of_the_process_group_then_resume_is_bit_identical(reference, tmp_path):
    data, ref = reference
    out = tmp_path / "run"
    rng = np.random.default_rng(int(time.time()))
    killed_at, gone_after = [], []
    for _ in range(10):
        before = latest_step(out)
        proc = launch(data, out)
        # A new checkpoint proves this segment trained; the kill lands at a random moment after it.
        wait_for(lambda b=before: latest_step(out) > b, 300, "a new checkpoint")
        time.sleep(float(rng.uniform(0.0, 0.3)))
        gone_after.append(kill_group(proc, out))
        killed_at.append(latest_step(out))
        assert killed_at[-1] < STEPS, "the run finished before the kill; make it longer"
        assert gone_after[-1] < GONE_WITHIN_S, f"processes of the run outlived the launcher: {gone_after}"
    code, log = finish(launch(data, out))
    assert code == 0, log[-3000:]
    assert_same_weights(ref, weights(out), f"after kills at steps {killed_at}")
    print(f"\nkill -9 of the process group x10 (latest checkpoint at the kills: {killed_at}); every process gone "
          f"after at most {max(gone_after):.2f} s; final weights bit-identical to the uninterrupted run")


def test_launcher_killed_during_start_up_leaves_no_process(reference, tmp_path):
    data, _ = reference
    out = tmp_path / "run"
    gone = []
    def ranks_started(launcher: int) -> bool:  # launcher -> torchrun agent -> the ranks
        return any(lifetime.child_pids(agent) for agent in lifetime.child_pids(launcher))

    for delay in (0.0, 2.0):  # after the ranks start: importing torch, then the rendezvous and the model build
        proc = launch(data, out)
        wait_for(lambda p=proc: ranks_started(p.pid), 120, "torchrun to start the ranks")
        time.sleep(delay)
        gone.append(kill_group(proc, out))
    assert max(gone) < GONE_WITHIN_S, gone
    print(f"\nlauncher killed 0 / 2 s after the ranks started: every process gone after "
          f"{', '.join(f'{g:.2f}' for g in gone)} s")


def test_a_second_launch_on_a_busy_run_folder_is_refused(reference, tmp_path):
    data, _ = reference
    out = tmp_path / "run"
    first = launch(data, out)
    wait_for(lambda: (out / lifetime.RUN_LOCK).exists() and lifetime.run_processes(out), 120, "the first run")
    code, log = finish(launch(data, out), timeout=120)
    assert code == 1, log[-2000:]
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"is in use by another run (pid {first.pid}: " in errors[0], log[-2000:]
    assert "locallaunch.py" in errors[0]
    # The first run is then stopped by a stop file instead of a signal (what the sbatch script's trap does).
    (out / "stop_requested").touch()
    code, log = finish(first, timeout=120)
    assert code == 75 and "Traceback" not in log, log[-3000:]
    assert json.loads((out / "preempted.json").read_text())["signal"] == "stop_requested"


def test_run_lock_names_its_holder_and_frees_on_death(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from mmpt_lite.lifetime import RunLock; "
                               f"RunLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(lifetime.RunFolderBusy, match=f"pid {holder.pid}: "):
        lifetime.RunLock(tmp_path).acquire()
    holder.kill()
    holder.wait()
    lifetime.RunLock(tmp_path).acquire().release()  # the kernel dropped the dead holder's lock


def test_wait_for_previous_ranks_waits_for_a_rank_to_die(tmp_path):
    rank = subprocess.Popen([sys.executable, "-c", "import time; from mmpt_lite.lifetime import hold_rank_lock; "
                             f"hold_rank_lock({str(tmp_path)!r}); print('in', flush=True); time.sleep(1.0)"],
                            stdout=subprocess.PIPE, text=True)
    assert rank.stdout.readline().strip() == "in"
    with pytest.raises(lifetime.RunFolderBusy, match=f"pid {rank.pid}: "):
        lifetime.wait_for_previous_ranks(tmp_path, timeout_s=0.2)
    t0 = time.monotonic()
    lifetime.wait_for_previous_ranks(tmp_path, timeout_s=30)  # returns once the rank has exited
    assert rank.poll() is not None or time.monotonic() - t0 < 30
    rank.wait()
