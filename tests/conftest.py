"""Shared fixtures: tiny run configs written on the fly."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# Keep every test single-threaded per process: CI has 2 cores and some tests start 2 ranks.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` skip, with the reason, where no CUDA device is visible."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (gpu marker); none is visible")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def repo_root() -> Path:
    return REPO


def make_video(path, colour="red", seconds=2.0, fps=10, size="80x60", codec="libx264"):
    """A small solid-colour video with a moving test pattern corner, written with the ffmpeg CLI."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    f"color=c={colour}:size={size}:rate={fps}:duration={seconds}", "-vf",
                    "drawbox=x=t*10:y=5:w=10:h=10:color=white:t=fill", "-c:v", codec, "-pix_fmt", "yuv420p",
                    str(path)], check=True)
    return path


def launch_tiny(overrides, *, jobtype="local_single", popen=False, dryrun=False):
    """``locallaunch.py projects/debug_tiny.yaml`` with ``--set`` overrides, one thread per process."""
    cmd = [sys.executable, "locallaunch.py", "projects/debug_tiny.yaml", "--jobtype", jobtype, *(["--dryrun"] * dryrun)]
    for o in overrides:
        cmd += ["--set", o]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if popen:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def sigkill_after_checkpoint(proc, run_dir, step, rng, timeout=300):
    """SIGKILL ``proc`` at a random moment (0-0.2 s) after ``run_dir`` holds a checkpoint at or past ``step``;
    returns the step of the latest checkpoint the killed run left."""
    from mmpt_lite.checkpoint import latest_checkpoint

    def latest():
        ck = latest_checkpoint(run_dir) if Path(run_dir).is_dir() else None
        return int(ck.name.split("_")[1]) if ck is not None else -1

    deadline = time.time() + timeout
    while time.time() < deadline and latest() < step:
        time.sleep(0.05)
    time.sleep(float(rng.uniform(0, 0.2)))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return latest()

