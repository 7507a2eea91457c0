"""The ``slurm`` job type: the sbatch script, the check of its request against the cluster, submission, and
waiting for the job.

One job = ``launch.nodes`` nodes × one srun task per node; each task is a torchrun agent that starts
``launch.ranks_per_node`` ranks and meets the other nodes' agents in a c10d rendezvous hosted on the
allocation's first node. The submitting process prepares the inputs (corpus, shards, vocabulary) before
``sbatch``, so ranks on every node only read them.

Preemption: the script asks for USR1 ``launch.signal_seconds`` before the time limit; its trap touches
``<train.output_dir>/stop_requested``, which rank 0 reads at every step boundary; the ranks finish their
optimizer step, checkpoint, rank 0 writes ``<train.output_dir>/preempted.json`` and they exit 0 (a SIGTERM
from ``scancel`` or the time limit works too, with torchrun's own complaint in the log); the script then requeues the job, whose next
start resumes from that checkpoint (``train.resume: auto``). Without sbatch on this machine the script is
written and the command to submit it printed.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from mmpt_lite.config import ConfigError, RunConfig, dump_config, resolve_path, save_config
from mmpt_lite.config.sections import LaunchConfig
from mmpt_lite.fileio import atomic_write_text
from mmpt_lite.train.preemption import MARKER, PREEMPTED_EXIT, STOP_FILE

TRAIN_MODULE = "mmpt_lite.train.main"
# Job states after which slurm starts nothing more for the job (squeue(1) "JOB STATE CODES").
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
                "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT"}


# --------------------------------------------------------------------------- sbatch values
def slurm_minutes(text: str) -> float | None:
    """A slurm time ("M", "M:S", "H:M:S", "D-H", "D-H:M", "D-H:M:S"; "infinite"/"UNLIMITED") in minutes;
    None when unlimited. Raises ValueError on anything else."""
    text = text.strip()
    if text.lower() in ("infinite", "unlimited"):
        return None
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if m is None:
        raise ValueError(text)
    days, a, b, c = (int(g) if g is not None else None for g in m.groups())
    if days is not None:  # D-H[:M[:S]]
        return days * 1440 + a * 60 + (b or 0) + (c or 0) / 60
    if c is not None:  # H:M:S
        return a * 60 + b + c / 60
    return a + (b or 0) / 60  # M or M:S


def mem_megabytes(text: str) -> int:
    """``launch.mem`` in MB as sbatch reads it (a number in MB or with a K/M/G/T suffix); 0 = the whole node."""
    m = re.fullmatch(r"(\d+)([KMGT]?)B?", text.strip().upper())
    if m is None:
        raise ValueError(text)
    scale = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}[m.group(2)]
    return int(int(m.group(1)) * scale)


def check_launch_values(lc: LaunchConfig) -> None:
    """The launch values sbatch would reject outright, named by key (ConfigError)."""
    try:
        limit = slurm_minutes(lc.time)
    except ValueError:
        raise ConfigError(f"launch.time: {lc.time!r} is not a slurm time (minutes, H:M:S or D-H:M:S)") from None
    try:
        mem_megabytes(lc.mem)
    except ValueError:
        raise ConfigError(f"launch.mem: {lc.mem!r} is not a slurm memory size (e.g. 64G, 500M; 0 = whole node)") \
            from None
    if lc.signal_seconds > 65535:  # sbatch --signal's limit
        raise ConfigError(f"launch.signal_seconds: {lc.signal_seconds} must be at most 65535")
    if limit is not None and lc.signal_seconds and lc.signal_seconds >= limit * 60:
        raise ConfigError(f"launch.signal_seconds: {lc.signal_seconds} s before the end leaves no time to train "
                          f"in launch.time={lc.time}")


def torchrun_rendezvous_args(nnodes: str, nproc: int, endpoint: str, rdzv_id: str) -> list[str]:
    """torchrun's options for ``nnodes`` agents meeting in a c10d rendezvous at ``endpoint``; the agents get
    their node ranks from the rendezvous, so every node runs the same command."""
    return [f"--nnodes={nnodes}", f"--nproc_per_node={nproc}", f"--rdzv_id={rdzv_id}", "--rdzv_backend=c10d",
            f"--rdzv_endpoint={endpoint}"]


def render_sbatch(cfg: RunConfig, config_path: Path, workdir: Path) -> str:
    """The sbatch script of ``cfg.launch``: nodes × ranks_per_node ranks training ``config_path``."""
    lc = cfg.launch
    check_launch_values(lc)
    nproc = lc.ranks_per_node
    log_dir = resolve_path(lc.script_dir)
    run_dir = resolve_path(cfg.train.output_dir)
    header = [
        "#!/bin/bash",
        f"#SBATCH --job-name={lc.job_name}",
        f"#SBATCH --nodes={lc.nodes}",
        "#SBATCH --ntasks-per-node=1",  # one torchrun per node; torchrun forks the node's ranks
        f"#SBATCH --cpus-per-task={lc.cpus_per_task}",
        *([f"#SBATCH --gpus-per-node={lc.gpus_per_node}"] if lc.gpus_per_node else []),  # none: CPU-only
        f"#SBATCH --mem={lc.mem}",
        f"#SBATCH --time={lc.time}",
        f"#SBATCH --output={log_dir}/%x-%j.out",
        "#SBATCH --open-mode=append",  # a requeued job's next start continues the same log
        *(["#SBATCH --requeue"] if lc.requeue else ["#SBATCH --no-requeue"]),
        *([f"#SBATCH --signal=B:USR1@{lc.signal_seconds}"] if lc.signal_seconds else []),
        *([f"#SBATCH --partition={lc.partition}"] if lc.partition else []),
        *([f"#SBATCH --account={lc.account}"] if lc.account else []),
    ]
    port = str(lc.master_port) if lc.master_port else "$((20000 + SLURM_JOB_ID % 20000))"
    torchrun = [shlex.quote(sys.executable), "-m", "torch.distributed.run",
                *torchrun_rendezvous_args("$SLURM_NNODES", nproc, '"$MASTER_ADDR:$MASTER_PORT"', "$SLURM_JOB_ID"),
                "-m", TRAIN_MODULE, shlex.quote(str(config_path))]
    marker = shlex.quote(str(run_dir / MARKER))
    stop_file = shlex.quote(str(run_dir / STOP_FILE))
    stopped = [
        f"if [ -f {marker} ]; then  # the ranks stopped at a checkpoint (the stop file, or a signal)",
        f'  echo "mmpt_lite: ranks stopped on request: $(cat {marker})"',
        *(['  echo "mmpt_lite: requeueing job $SLURM_JOB_ID to resume from that checkpoint"',
           '  scontrol requeue "$SLURM_JOB_ID" && exit 0'] if lc.requeue else []),
        '  echo "mmpt_lite: not requeued; submit this script again to resume from that checkpoint"',
        f"  exit {PREEMPTED_EXIT}",
        "fi",
    ]
    body = [
        "",
        "# The inputs (corpus, shards, vocabulary) were prepared by the submitting process: ranks only read them.",
        "set -uo pipefail",
        f"cd {shlex.quote(str(workdir))}",
        f'echo "mmpt_lite: job $SLURM_JOB_ID start ${{SLURM_RESTART_COUNT:-0}} on $SLURM_JOB_NODELIST, '
        f'run folder {run_dir}"',
        f"rm -f {marker} {stop_file}  # consumed: a marker or request left now is from this start",
        "# Rendezvous on the first node of the allocation.",
        'export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        f"export MASTER_PORT={port}",
        f"export OMP_NUM_THREADS={max(1, lc.cpus_per_task // nproc)}",
        # torchrun forwards SIGTERM to its ranks, then waits this long before SIGKILL.
        f"export TORCH_ELASTIC_SHUTDOWN_TIMEOUT={max(30, lc.signal_seconds)}",
        "",
        "# USR1 (launch.signal_seconds before the time limit, or scancel --signal=USR1 --batch): the stop file,",
        "# which rank 0 reads at every step; the ranks finish their step, checkpoint and stop, and torchrun ends",
        "# quietly (no signal reaches it).",
        f'on_usr1() {{ echo "mmpt_lite: USR1: stopping the ranks at a checkpoint"; touch {stop_file}; }}',
        "trap on_usr1 USR1",
        # srun runs in the background so the trap runs at once (bash defers traps during a foreground command);
        # since slurm 22.05 srun does not inherit --cpus-per-task from sbatch.
        f"srun --kill-on-bad-exit=1 --ntasks-per-node=1 --cpus-per-task={lc.cpus_per_task} " + " ".join(torchrun)
        + " &",
        "srun_pid=$!",
        'while kill -0 "$srun_pid" 2>/dev/null; do wait "$srun_pid"; done  # a trap ends a wait early',
        'wait "$srun_pid"; status=$?',
        *stopped,
        'exit "$status"',
        "",
    ]
    return "\n".join(header + body)


# --------------------------------------------------------------------------- the cluster's limits
@dataclass(frozen=True)
class SlurmNode:
    name: str
    cpus: int
    mem_mb: int
    gpus: int


@dataclass(frozen=True)
class SlurmPartition:
    name: str
    max_minutes: float | None  # None = no limit
    max_nodes: int | None  # a job's most nodes; None = no limit
    nodes: tuple[SlurmNode, ...]


class SlurmError(RuntimeError):
    """A slurm command failed (the message is its own)."""


def _slurm(*argv: str) -> str:
    r = subprocess.run(list(argv), capture_output=True, text=True)
    if r.returncode != 0:
        lines = (r.stderr or r.stdout).strip().splitlines() or [f"exit status {r.returncode}"]
        raise SlurmError(f"{argv[0]}: {lines[-1]}")
    return r.stdout


def _gres_gpus(gres: str) -> int:
    """GPUs in a node's Gres ("gpu:8", "gpu:a100:4(S:0-1),gpu:v100:2"; "(null)" = none)."""
    total = 0
    for entry in gres.split(","):
        parts = entry.split("(")[0].split(":")
        if parts[0] == "gpu" and parts[-1].isdigit():
            total += int(parts[-1])
    return total


def query_partition(name: str = "") -> SlurmPartition:
    """The partition ``name`` ('' = the cluster's default) as sinfo describes it."""
    rows = [line.split("|") for line in _slurm("sinfo", "-h", "-o", "%R|%P|%l|%s").splitlines() if line.strip()]
    names = sorted({r[0] for r in rows})
    if name:
        row = next((r for r in rows if r[0] == name), None)
        if row is None:
            raise ConfigError(f"launch.partition={name}: no such partition (this cluster has: {', '.join(names)})")
    else:
        row = next((r for r in rows if r[1].endswith("*")), None)
        if row is None:
            raise ConfigError(f"launch.partition: this cluster has no default partition; set one of: {', '.join(names)}")
    max_nodes = row[3].split("-")[-1]
    nodes = []
    for line in _slurm("sinfo", "-h", "-N", "-p", row[0], "-o", "%N|%c|%m|%G").splitlines():
        if line.strip():
            node, cpus, mem, gres = line.split("|")
            nodes.append(SlurmNode(node, int(cpus.rstrip("+")), int(mem.rstrip("+")), _gres_gpus(gres)))
    return SlurmPartition(row[0], slurm_minutes(row[2]), int(max_nodes) if max_nodes.isdigit() else None,
                          tuple(dict.fromkeys(nodes)))


def check_fits(lc: LaunchConfig, part: SlurmPartition) -> None:
    """Refuse (ConfigError naming the key) a request no ``lc.nodes`` nodes of ``part`` can ever hold, instead
    of a job that pends forever."""
    p, nodes = part.name, part.nodes
    limit = slurm_minutes(lc.time)
    if part.max_minutes is not None and (limit is None or limit > part.max_minutes):
        raise ConfigError(f"launch.time={lc.time}: partition {p} allows at most {_hms(part.max_minutes)}")
    if part.max_nodes is not None and lc.nodes > part.max_nodes:
        raise ConfigError(f"launch.nodes={lc.nodes}: partition {p} allows at most {part.max_nodes} nodes per job")
    if lc.nodes > len(nodes):
        raise ConfigError(f"launch.nodes={lc.nodes}: partition {p} has {len(nodes)} node(s)")
    wanted = [("cpus_per_task", lc.cpus_per_task, "cpus", "CPUs"), ("gpus_per_node", lc.gpus_per_node, "gpus", "GPUs"),
              ("mem", mem_megabytes(lc.mem), "mem_mb", "MB of memory")]
    for key, need, attr, unit in wanted:
        most = max((getattr(n, attr) for n in nodes), default=0)
        if need > most:
            value = lc.mem if key == "mem" else need
            hint = "; launch.gpus_per_node=0 asks for a CPU-only allocation" if key == "gpus_per_node" else ""
            raise ConfigError(f"launch.{key}={value}: partition {p} has nodes with at most {most} {unit}{hint}")
    fit = [n for n in nodes if all(getattr(n, attr) >= need for _, need, attr, _ in wanted)]
    if len(fit) < lc.nodes:
        raise ConfigError(f"launch.nodes={lc.nodes}: partition {p} has {len(fit)} node(s) with launch.cpus_per_task="
                          f"{lc.cpus_per_task} CPUs, launch.gpus_per_node={lc.gpus_per_node} GPUs and launch.mem={lc.mem}")


def _hms(minutes: float) -> str:
    seconds = int(round(minutes * 60))
    days, rest = divmod(seconds, 86400)
    text = f"{rest // 3600}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}-{text}" if days else text


# --------------------------------------------------------------------------- submitting and waiting
def submit(script_path: Path) -> str:
    """``sbatch --test-only`` (slurm's own verdict on the request), then ``sbatch``; returns the job id."""
    try:
        _slurm("sbatch", "--test-only", str(script_path))
    except SlurmError as exc:
        raise ConfigError(f"launch: sbatch --test-only refused the job ({exc}); see {script_path}") from None
    return _slurm("sbatch", "--parsable", str(script_path)).strip().split(";")[0]


def job_info(job_id: str) -> dict[str, str] | None:
    """``scontrol show job`` as a dict (JobState, ExitCode, Restarts, StdOut, ...); None once slurmctld has
    forgotten the job (MinJobAge after its end)."""
    r = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True)
    if r.returncode != 0:
        return None
    line = r.stdout.strip()
    keys = list(re.finditer(r"(?:^|\s)([A-Za-z][\w/:]*)=", line))
    return {k.group(1): line[k.end():(keys[i + 1].start() if i + 1 < len(keys) else len(line))].strip()
            for i, k in enumerate(keys)}


def exit_status(info: dict[str, str]) -> int:
    """A finished job's exit status as a shell reports it (128 + signal); 1 for a job that failed without
    one (cancelled before it ran, node failure)."""
    code, _, sig = info.get("ExitCode", "1:0").partition(":")
    status = 128 + int(sig) if sig and int(sig) else int(code)
    return status if status or info.get("JobState") == "COMPLETED" else 1


def wait_for_job(job_id: str, log_path: Path, *, out: TextIO = sys.stdout, poll_s: float = 1.0) -> int:
    """Stream the job's log to ``out`` until the job ends (requeued starts included); its exit status."""
    offset, state, restarts = 0, "", "0"
    while True:
        info = job_info(job_id)
        if log_path.is_file():  # whole lines only, so the state lines below never split one
            with open(log_path, "rb") as f:
                f.seek(offset)
                chunk = f.read()
            ends = info is None or info.get("JobState") in FINAL_STATES
            chunk = chunk if ends else chunk[:chunk.rfind(b"\n") + 1]
            offset += len(chunk)
            out.write(chunk.decode(errors="replace"))
            out.flush()
        if info is None:
            print(f"slurm job {job_id}: no longer known to slurmctld; its log: {log_path}", file=out, flush=True)
            return 1
        job_state = info.get("JobState", "")
        if info.get("Restarts", "0") != restarts:
            restarts = info["Restarts"]
            print(f"slurm job {job_id}: requeued (start {restarts})", file=out, flush=True)
        if job_state in FINAL_STATES:
            status = exit_status(info)
            print(f"slurm job {job_id}: {job_state}, exit status {status}; log {log_path}", file=out, flush=True)
            return status
        if job_state != state:
            state = job_state
            reason = info.get("Reason", "None")
            print(f"slurm job {job_id}: {state}" + (f" ({reason})" if reason != "None" else ""), file=out, flush=True)
        time.sleep(poll_s)


def launch_slurm(cfg: RunConfig, config_path: Path, workdir: Path, *, dryrun: bool, wait: bool,
                 prepare: Callable[[RunConfig], RunConfig]) -> int:
    """The slurm job type: check, prepare the inputs once (``prepare``), write the script, submit; with
    ``wait`` follow the job to its end and return its exit status. Raises ConfigError / SlurmError."""
    lc = cfg.launch
    script = render_sbatch(cfg, config_path, workdir)
    script_path = resolve_path(lc.script_dir) / f"{lc.job_name}-{time.strftime('%Y%m%d-%H%M%S')}.sbatch"
    if dryrun:
        print(f"# sbatch script (would be written to {script_path})\n{script}")
        print(f"# resolved config (would be written to {config_path})\n{dump_config(cfg)}")
        return 0
    if not shutil.which("sbatch"):
        save_config(cfg, config_path)
        _write_script(script_path, script)
        print(f"sbatch not found on this machine; submit it on the cluster with: sbatch {script_path}")
        return 0
    check_fits(lc, query_partition(lc.partition))
    cfg = prepare(cfg)  # the ranks only read what this made
    save_config(cfg, config_path)
    _write_script(script_path, render_sbatch(cfg, config_path, workdir))
    job_id = submit(script_path)
    log_path = resolve_path(lc.script_dir) / f"{lc.job_name}-{job_id}.out"
    run_dir = resolve_path(cfg.train.output_dir)
    print(f"submitted slurm job {job_id}: log {log_path} | run folder {run_dir}", flush=True)
    if not wait:
        print(f"follow it with: tail -f {log_path}; its state: scontrol show job {job_id}; stop it: scancel {job_id}")
        return 0
    try:
        return wait_for_job(job_id, log_path)
    except KeyboardInterrupt:
        print(f"\nstopped waiting; slurm job {job_id} goes on (scancel {job_id} stops it)", file=sys.stderr)
        return 130


def _write_script(script_path: Path, script: str) -> None:
    script_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(script_path, script)
    print(f"wrote sbatch script: {script_path}")
