"""Multi-node training without SLURM: two torchrun agents on localhost stand for two nodes (one rank each),
meeting in the c10d rendezvous with the torchrun options the slurm job's script uses, node ranks assigned by
the rendezvous. The run must equal a one-node two-rank run (local_small) with the same global batch, every
weight bit for bit on CPU: each rank reads exactly its part of the per-epoch plan, wherever it runs."""

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import launch_tiny
from safetensors.torch import load_file

from mmpt_lite.checkpoint import latest_checkpoint, load_checkpoint
from mmpt_lite.slurm import TRAIN_MODULE, torchrun_rendezvous_args

REPO = Path(__file__).resolve().parents[1]
STEPS = 6  # several epochs of the tiny corpus (6 videos; a step takes 2 ranks x 4 clips): several plans read


@pytest.fixture(scope="module")
def one_node(tmp_path_factory):
    """local_small: one torchrun, two ranks (also makes the tiny corpus and the resolved config)."""
    root = tmp_path_factory.mktemp("multinode")
    r = launch_tiny([f"data.root={root / 'how2-synth'}", f"train.output_dir={root / 'one_node'}",
                     f"train.max_steps={STEPS}", f"train.ckpt_every={STEPS}"], jobtype="local_small")
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_localhost_equal_one_node_with_two_ranks(one_node):
    out = one_node / "two_nodes"
    rdzv = torchrun_rendezvous_args("2", 1, f"127.0.0.1:{free_port()}", f"mmpt-test-{os.getpid()}")
    # Each "node" runs the same command; the resolved config of the one-node run, another output folder.
    cmd = [sys.executable, "-m", "torch.distributed.run", *rdzv, "-m", TRAIN_MODULE,
           str(one_node / "one_node" / "config.yaml"), "--set", f"train.output_dir={out}"]
    env = dict(os.environ, OMP_NUM_THREADS="1", LOGLEVEL="INFO")
    agents = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
              for _ in range(2)]
    logs = []
    try:
        for agent in agents:
            logs.append(agent.communicate(timeout=300)[0])
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
    assert [a.returncode for a in agents] == [0, 0], "\n".join(log[-3000:] for log in logs)
    group_ranks = sorted(int(m) for log in logs for m in re.findall(r"group_rank=(\d+)", log))
    assert group_ranks == [0, 1], "\n".join(log[-2000:] for log in logs)  # one node rank each, from the rendezvous

    ckpt = load_checkpoint(latest_checkpoint(out))
    assert ckpt["meta"]["step"] == STEPS and ckpt["train_state"]["world_size"] == 2
    two = load_file(str(latest_checkpoint(out) / "model.safetensors"))
    one = load_file(str(latest_checkpoint(one_node / "one_node") / "model.safetensors"))
    assert two.keys() == one.keys() and len(one) > 10
    differ = [k for k in one if not torch.equal(one[k], two[k])]
    assert not differ, differ
