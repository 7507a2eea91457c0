"""A real one-node SLURM cluster on this machine for the tests (Debian's slurmctld, slurmd, munge).

``running_cluster`` writes a slurm.conf in a tmp folder (this host as the one node with the CPUs and memory
``slurmd -C`` reports, partition ``debug`` with a 1 hour limit, cons_tres, no cgroups, no accounting, requeue
allowed, jobs remembered for an hour), makes a munge key, starts munged, slurmctld and slurmd in the
foreground as children of the test process, waits until sinfo shows the node idle, points ``SLURM_CONF`` at it
for the tests (and the jobs they submit), and afterwards cancels every job, waits for them and stops the
three daemons. It skips, with the reason, where the binaries are missing or the tests do not run as root.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "sinfo", "squeue", "scancel")
PARTITION = "debug"
PARTITION_MAX_TIME = "1:00:00"


def missing_reason() -> str | None:
    absent = [b for b in BINARIES if shutil.which(b) is None]
    if absent:
        return f"needs SLURM and munge (apt-get install slurmctld slurmd slurm-client munge): {', '.join(absent)} not found"
    if os.geteuid() != 0:
        return "needs root to start slurmd and munged (CI runs as root)"
    try:
        socket.gethostbyname(socket.gethostname())
    except OSError:
        return f"this host's name {socket.gethostname()!r} does not resolve (the job's rendezvous address)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class SlurmCluster:
    root: Path
    conf: Path
    host: str
    cpus: int
    mem_mb: int
    daemons: list[subprocess.Popen] = field(default_factory=list)

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        """A slurm client command against this cluster."""
        return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=60,
                              env=dict(os.environ, SLURM_CONF=str(self.conf)))

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` of one job as a dict (jobs stay known for MinJobAge = 1 hour)."""
        from mmpt_lite.slurm import job_info

        info = job_info(job_id)
        assert info is not None, f"slurm job {job_id} unknown to slurmctld"
        return info

    def wait_job(self, job_id: str, states: set[str], timeout: float = 120) -> dict[str, str]:
        deadline = time.time() + timeout
        while True:
            info = self.job(job_id)
            if info["JobState"] in states or time.time() > deadline:
                return info
            time.sleep(0.2)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:])
                         for p in sorted((self.root / "log").glob("*")))


def _node_line(host: str) -> tuple[str, int, int]:
    """This machine as slurmd sees it: the NodeName line of ``slurmd -C`` (CPUs, topology, RealMemory)."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
    words = [w for w in out.split() if not w.startswith(("NodeName=", "UpTime="))]
    values = dict(w.split("=", 1) for w in words)
    return f"NodeName={host} NodeAddr=127.0.0.1 " + " ".join(words), int(values["CPUs"]), int(values["RealMemory"])


def _write_conf(root: Path, host: str, node_line: str) -> Path:
    conf = root / "slurm.conf"
    (root / "plugstack.conf").write_text("")  # no site SPANK plugins from /etc/slurm
    conf.write_text(f"""\
ClusterName=mmpttest
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
CredType=cred/munge
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s).
AuthInfo=socket={root}/munge.socket,cred_expire=5
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
PlugStackConfig={root}/plugstack.conf
# No cgroups: the tests run in containers.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=1
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
JobRequeue=1
MinJobAge=3600
KillWait=5
SlurmctldDebug=info
SlurmdDebug=info
{node_line} State=UNKNOWN
PartitionName={PARTITION} Nodes={host} Default=YES MaxTime={PARTITION_MAX_TIME} State=UP
""")
    return conf


def start_cluster(root: Path) -> SlurmCluster:
    for sub in ("state", "spool", "log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    host = socket.gethostname().split(".")[0]
    node_line, cpus, mem_mb = _node_line(host)
    conf = _write_conf(root, host, node_line)
    key = root / "munge.key"
    key.write_bytes(secrets.token_bytes(1024))
    key.chmod(0o400)
    cluster = SlurmCluster(root, conf, host, cpus, mem_mb)
    # --force: munged wants world-executable folders above its socket; pytest's tmp folders are 0700.
    commands = [
        ["munged", "--foreground", "--force", f"--socket={root}/munge.socket", f"--key-file={key}",
         f"--pid-file={root}/munged.pid", f"--log-file={root}/log/munged.log", f"--seed-file={root}/munged.seed"],
        ["slurmctld", "-D", "-c", "-f", str(conf)],
        ["slurmd", "-D", "-f", str(conf), "-N", host],
    ]
    env = dict(os.environ, SLURM_CONF=str(conf))
    try:
        for argv in commands:
            with open(root / "log" / f"{argv[0]}.out", "w") as out:
                cluster.daemons.append(subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                                        start_new_session=True))
            if argv[0] == "munged":
                _wait(lambda: (root / "munge.socket").exists(), 10, "munged's socket", cluster)
        _wait(lambda: cluster.run("sinfo", "-h", "-N", "-o", "%t", check=False).stdout.strip() == "idle", 30,
              "the node idle in sinfo", cluster)
    except BaseException:
        stop_cluster(cluster)
        raise
    return cluster


def _wait(ready, timeout: float, what: str, cluster: SlurmCluster) -> None:
    deadline = time.time() + timeout
    while not ready():
        dead = [p.args[0] for p in cluster.daemons if p.poll() is not None]
        if dead or time.time() > deadline:
            raise RuntimeError(f"test SLURM cluster: no {what} ({', '.join(dead) or 'timeout'}):\n{cluster.logs()}")
        time.sleep(0.1)


def stop_cluster(cluster: SlurmCluster) -> None:
    """Cancel every job, wait until none is left, then stop slurmd, slurmctld and munged (in that order)."""
    if any(p.poll() is None for p in cluster.daemons[1:]):
        cluster.run("scancel", "--user=root", check=False)
        deadline = time.time() + 30
        while time.time() < deadline:
            queued = cluster.run("squeue", "-h", "-o", "%i", check=False)
            if queued.returncode != 0 or not queued.stdout.strip():
                break
            time.sleep(0.2)
    for proc in reversed(cluster.daemons):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def running_cluster(tmp_path_factory) -> Iterator[SlurmCluster]:
    """The body of a session fixture: a started cluster with ``SLURM_CONF`` set, stopped afterwards."""
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    cluster = start_cluster(tmp_path_factory.mktemp("slurm"))
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        yield cluster
    finally:
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
        stop_cluster(cluster)


def job_id_of(text: str) -> str:
    """The job id in the launcher's 'submitted slurm job N' line."""
    m = re.search(r"submitted slurm job (\d+)", text)
    assert m, text[-3000:]
    return m.group(1)
