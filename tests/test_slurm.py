"""The slurm job type end to end on a real one-node SLURM cluster started for these tests
(tests/slurm_cluster.py): a CPU-only job of 2 gloo ranks completes and its checkpoint evaluates; a request
the partition cannot hold is refused at submission naming the key; a job stopped by USR1 checkpoints, is
requeued and ends with the weights of an uninterrupted run."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from slurm_cluster import PARTITION, job_id_of, running_cluster

from mmpt_lite.checkpoint import latest_checkpoint, load_checkpoint
from mmpt_lite.config import ConfigError, load_config
from mmpt_lite.slurm import check_fits, exit_status, mem_megabytes, query_partition, slurm_minutes

REPO = Path(__file__).resolve().parents[1]
STEPS = 24  # a few seconds of training: long enough for a USR1 to land mid-run (tenths of a second a step)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    yield from running_cluster(tmp_path_factory)


def slurm_launch(root: Path, run: str, cpus: int, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """locallaunch.py debug_tiny.yaml --jobtype slurm as a CPU-only 2-rank job of ``STEPS`` steps."""
    sets = [f"data.root={root / 'how2-synth'}", f"train.output_dir={root / run}", f"launch.script_dir={root / 'slurm'}",
            f"train.max_steps={STEPS}", "train.ckpt_every=2"]
    cmd = [sys.executable, "locallaunch.py", "projects/debug_tiny.yaml", "--jobtype", "slurm", "--time", "10:00",
           "--gpus_per_node", "0", "--cpus_per_task", str(cpus), "--nproc_per_node", "2", *extra]
    for s in sets:
        cmd += ["--set", s]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


def log_path_of(stdout: str) -> Path:
    m = re.search(r"submitted slurm job \d+: log (\S+) \| run folder (\S+)", stdout)
    assert m, stdout[-3000:]
    return Path(m.group(1))


@pytest.fixture(scope="module")
def completed(cluster, tmp_path_factory):
    """One job submitted with --wait, uninterrupted (the submitting process also makes the tiny corpus)."""
    if cluster.cpus < 2:
        pytest.skip(f"needs a node with 2 CPUs for 2 ranks; this one has {cluster.cpus}")
    root = tmp_path_factory.mktemp("slurm_runs")
    r = slurm_launch(root, "ref", cluster.cpus, "--wait")
    return root, r


def test_job_completes_and_its_checkpoint_evaluates(cluster, completed):
    root, r = completed
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:] + cluster.logs()
    job_id = job_id_of(r.stdout)
    log = log_path_of(r.stdout)
    info = cluster.job(job_id)
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", "0")
    assert info["NumCPUs"] == str(cluster.cpus) and info["StdOut"] == str(log)
    assert f"slurm job {job_id}: COMPLETED, exit status 0" in r.stdout
    # The inputs were made by the submitting process before sbatch; the job's ranks only read them.
    assert "generating the synthetic corpus" in r.stderr and "corpus vocabulary" in r.stderr
    job_log = log.read_text()
    assert "generating" not in job_log and "sharding" not in job_log
    assert "ranks: 2 on cpu" in job_log and f"done: step {STEPS}" in job_log
    assert job_log.splitlines()[0] in r.stdout  # the log was streamed while waiting

    script = next((root / "slurm").glob("*.sbatch")).read_text()
    assert "--gpus-per-node" not in script and "--nproc_per_node=2" in script
    assert "export OMP_NUM_THREADS=1" in script and f"#SBATCH --cpus-per-task={cluster.cpus}" in script

    ckpt = load_checkpoint(latest_checkpoint(root / "ref"))
    assert ckpt["meta"]["step"] == STEPS and ckpt["train_state"]["world_size"] == 2
    out = root / "msrvtt.json"
    ev = subprocess.run([sys.executable, "eval/eval_msrvtt.py", "--pretrain_cnn_path", str(root / "ref"),
                         "--config", str(root / "ref" / "config.yaml"), "--num_frames", "4", "--video_size", "32",
                         "--num_windows_test", "1", "--no_cache", "--quiet", "--output", str(out)],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert ev.returncode == 0, ev.stderr[-3000:]
    result = json.loads(out.read_text())["models"]["checkpoint"]
    assert result["checkpoint"]["kind"] == "mmpt_lite" and f"step_{STEPS:08d}" in result["checkpoint"]["description"]
    metrics = result["metrics"]
    assert result["num_texts"] == 6 and 0 <= metrics["R@1"] <= metrics["R@5"] <= metrics["R@10"] == 100, result


@pytest.mark.parametrize("override,message", [
    ("launch.cpus_per_task={more_cpus}", "launch.cpus_per_task={more_cpus}: partition debug has nodes with at most "
                                         "{cpus} CPUs"),
    ("launch.gpus_per_node=1", "launch.gpus_per_node=1: partition debug has nodes with at most 0 GPUs; "
                               "launch.gpus_per_node=0 asks for a CPU-only allocation"),
    ("launch.nodes=2", "launch.nodes=2: partition debug has 1 node(s)"),
    ("launch.mem=64T", "launch.mem=64T: partition debug has nodes with at most {mem} MB of memory"),
    ("launch.time=2:00:00", "launch.time=2:00:00: partition debug allows at most 1:00:00"),
    ("launch.partition=gpu", "launch.partition=gpu: no such partition (this cluster has: debug)"),
], ids=["cpus", "gpus", "nodes", "mem", "time", "partition"])
def test_requests_the_partition_cannot_hold_name_the_key(cluster, override, message):
    values = dict(cpus=cluster.cpus, more_cpus=cluster.cpus + 1, mem=cluster.mem_mb)
    cfg = load_config(REPO / "projects" / "debug_tiny.yaml", [
        "launch.gpus_per_node=0", "launch.time=10:00", "launch.cpus_per_task=1", override.format(**values)])
    with pytest.raises(ConfigError) as err:
        check_fits(cfg.launch, query_partition(cfg.launch.partition))
    assert str(err.value) == message.format(**values)


def test_unfit_job_is_refused_before_anything_is_prepared_or_queued(cluster, tmp_path):
    """The issue's job that pended forever: more CPUs per task than any node has. Refused in one line
    naming the key, with exit status 2, before the corpus is made or anything reaches the queue."""
    before = cluster.run("squeue", "-h", "-o", "%i").stdout
    r = slurm_launch(tmp_path, "run", cluster.cpus + 8)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.strip().splitlines() == [
        f"error: launch.cpus_per_task={cluster.cpus + 8}: partition {PARTITION} has nodes with at most "
        f"{cluster.cpus} CPUs"], r.stderr
    assert not (tmp_path / "how2-synth").exists() and not (tmp_path / "slurm").exists()
    assert cluster.run("squeue", "-h", "-o", "%i").stdout == before


def test_usr1_checkpoints_requeues_and_ends_like_an_uninterrupted_run(cluster, completed):
    root, ref = completed
    assert ref.returncode == 0, ref.stderr[-3000:]
    r = slurm_launch(root, "preempted", cluster.cpus, timeout=120)  # no --wait: submits and returns
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    job_id, log = job_id_of(r.stdout), log_path_of(r.stdout)
    assert f"scancel {job_id}" in r.stdout
    run_dir = root / "preempted"
    deadline = time.time() + 120
    while not (run_dir.is_dir() and latest_checkpoint(run_dir) is not None):  # training has begun
        state = cluster.job(job_id)["JobState"]
        assert time.time() < deadline and state in ("PENDING", "RUNNING"), (state, log.read_text()[-3000:])
        time.sleep(0.05)
    cluster.run("scancel", "--signal=USR1", "--batch", job_id)  # as slurm does launch.signal_seconds before the end

    info = cluster.wait_job(job_id, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, timeout=240)
    text = log.read_text()
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", "1"), text[-4000:]
    stopped = re.search(r"ranks stopped on request: (\{.*\})", text)
    assert stopped and "mmpt_lite: USR1" in text and f"requeueing job {job_id}" in text, text[-4000:]
    assert f"job {job_id} start 1" in text, text[-4000:]
    marker = json.loads(stopped.group(1))
    assert 2 <= marker["step"] < STEPS and marker["signal"] == "stop_requested", marker
    assert "Traceback" not in text and "SignalException" not in text, text[-4000:]  # torchrun got no signal
    assert f"(step {marker['step']}," in text.split(f"job {job_id} start 1", 1)[1]  # the second start resumed there

    final = load_file(str(latest_checkpoint(run_dir) / "model.safetensors"))
    reference = load_file(str(latest_checkpoint(root / "ref") / "model.safetensors"))
    assert final.keys() == reference.keys()
    assert all(torch.equal(final[k], reference[k]) for k in reference)


def test_slurm_values_read_as_sbatch_reads_them():
    assert [slurm_minutes(t) for t in ("90", "10:30", "2:00:00", "1-0", "1-2:30", "1-00:00:30")] == \
        [90, 10.5, 120, 1440, 1440 + 150, 1440.5]
    assert slurm_minutes("infinite") is None and slurm_minutes("UNLIMITED") is None
    assert [mem_megabytes(m) for m in ("0", "500", "500M", "64G", "1T", "2048K")] == [0, 500, 500, 65536, 1 << 20, 2]
    for bad in ("1:2:3:4", "ten", "-5"):
        with pytest.raises(ValueError):
            slurm_minutes(bad)
    # A finished job's status as a shell would report it; a job that failed without an exit code is still 1.
    assert exit_status({"JobState": "COMPLETED", "ExitCode": "0:0"}) == 0
    assert exit_status({"JobState": "FAILED", "ExitCode": "3:0"}) == 3
    assert exit_status({"JobState": "CANCELLED", "ExitCode": "0:15"}) == 143
    assert exit_status({"JobState": "NODE_FAIL", "ExitCode": "0:0"}) == 1
