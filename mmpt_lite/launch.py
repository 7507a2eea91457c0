"""Job launching: one resolved config, four job types.

local_single  the training entry point in this process (one rank)
local_small   torchrun with ``launch.nproc_local_small`` processes (2; gloo on CPU, nccl on GPU)
local_big     torchrun over every local GPU (``launch.nproc_local_big``, 8, when none is visible)
slurm         an sbatch script: one srun task per node, each running torchrun with the c10d
              rendezvous on the first node of the allocation; submitted with sbatch when present

Workers never re-read the user's YAML: the launcher writes the resolved config to
``<train.output_dir>/config.yaml`` and every rank loads that file, so what ran is what was saved.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from mmpt_lite import lifetime
from mmpt_lite.config import ConfigError, RunConfig, dump_config, load_config, resolve_path, save_config
from mmpt_lite.fileio import atomic_write_text
from mmpt_lite.train.preemption import PREEMPTED_EXIT, read_marker
from mmpt_lite.train.tasks import get_task

JOB_TYPES = ("local_single", "local_small", "local_big", "slurm")
TRAIN_MODULE = "mmpt_lite.train.main"


def _torchrun(nproc: int, config_path: Path, extra: list[str] | None = None) -> list[str]:
    # `python -m torch.distributed.run` is torchrun with the interpreter pinned to this one.
    return [sys.executable, "-m", "torch.distributed.run", *(extra or ["--standalone"]),
            f"--nproc_per_node={nproc}", "-m", TRAIN_MODULE, str(config_path)]


def local_gpu_count() -> int:
    try:
        import torch
        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - torch without CUDA support reports nothing useful
        return 0


def local_ranks(cfg: RunConfig, jobtype: str) -> int:
    """How many processes a local job type starts."""
    if jobtype == "local_single":
        return 1
    if jobtype == "local_small":
        return cfg.launch.nproc_local_small
    if jobtype == "local_big":
        return local_gpu_count() or cfg.launch.nproc_local_big
    raise ValueError(f"--jobtype {jobtype}: not a local job type (valid: {', '.join(JOB_TYPES)})")


def build_command(cfg: RunConfig, jobtype: str, config_path: Path) -> list[str]:
    """The process command for a local job type (slurm uses :func:`render_sbatch`)."""
    if jobtype == "local_single":
        return [sys.executable, "-m", TRAIN_MODULE, str(config_path)]
    return _torchrun(local_ranks(cfg, jobtype), config_path)


def render_sbatch(cfg: RunConfig, config_path: Path, workdir: Path) -> str:
    """A complete sbatch script for ``cfg.launch`` (nodes × gpus_per_node ranks)."""
    lc = cfg.launch
    log_dir = resolve_path(lc.script_dir)
    header = [
        "#!/bin/bash",
        f"#SBATCH --job-name={lc.job_name}",
        f"#SBATCH --nodes={lc.nodes}",
        "#SBATCH --ntasks-per-node=1",  # one torchrun per node; torchrun forks the GPU ranks
        f"#SBATCH --gpus-per-node={lc.gpus_per_node}",
        f"#SBATCH --cpus-per-task={lc.cpus_per_task}",
        f"#SBATCH --mem={lc.mem}",
        f"#SBATCH --time={lc.time}",
        f"#SBATCH --output={log_dir}/%x-%j.out",
    ]
    if lc.partition:
        header.append(f"#SBATCH --partition={lc.partition}")
    if lc.account:
        header.append(f"#SBATCH --account={lc.account}")
    torchrun = [
        shlex.quote(sys.executable), "-m", "torch.distributed.run",
        "--nnodes=$SLURM_NNODES", f"--nproc_per_node={lc.gpus_per_node}",
        "--rdzv_id=$SLURM_JOB_ID", "--rdzv_backend=c10d", '--rdzv_endpoint="$MASTER_ADDR:$MASTER_PORT"',
        "-m", TRAIN_MODULE, shlex.quote(str(config_path)),
    ]
    body = [
        "",
        "set -euo pipefail",
        f"cd {shlex.quote(str(workdir))}",
        "# Rendezvous on the first node of the allocation.",
        'export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        f"export MASTER_PORT={lc.master_port}",
        f"export OMP_NUM_THREADS={max(1, lc.cpus_per_task // max(1, lc.gpus_per_node))}",
        "srun --kill-on-bad-exit=1 " + " ".join(torchrun),
        "",
    ]
    return "\n".join(header + body)


def describe_run(cfg: RunConfig, jobtype: str) -> str:
    """The main job's first line: which data and which model preset."""
    d = cfg.data
    corpus = ", random training hues" if d.synthetic.train_hue == "random" else ""
    corpus += f", {d.synthetic.train_videos} training videos" if d.synthetic.train_videos else ""
    data = (f"how2-synth (synthetic seed {d.synthetic.seed}, size {d.synthetic.size}{corpus}) at {resolve_path(d.root)}"
            if d.synthetic.enabled else f"{resolve_path(d.root)}")
    model = get_task(cfg.train.task).describe(cfg)
    return f"mmpt_lite {jobtype}: data {data} | model preset {model} | output {resolve_path(cfg.train.output_dir)}"


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="locallaunch.py", description=__doc__.splitlines()[0])
    p.add_argument("config", help="run config YAML (projects/*.yaml)")
    p.add_argument("--jobtype", choices=JOB_TYPES, default="local_single")
    p.add_argument("--dryrun", action="store_true", help="print the command/script and resolved config; launch nothing")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.max_steps=200 (repeatable)")
    # slurm conveniences; each is the same as --set launch.<name>=...
    for name in ("nodes", "gpus_per_node", "partition", "time", "account"):
        p.add_argument(f"--{name}", default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    overrides = list(args.overrides)
    overrides += [f"launch.{n}={getattr(args, n)}" for n in ("nodes", "gpus_per_node", "partition", "time", "account")
                  if getattr(args, n) is not None]
    try:
        cfg = load_config(args.config, overrides)
        get_task(cfg.train.task)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if cfg.stages.order:
        if args.jobtype == "slurm":
            print(f"error: stages.order: {args.config} is a staged recipe ({', '.join(cfg.stages.order)}); --jobtype "
                  "slurm submits one run: --set stages.order=[] (and a stage's settings) per job", file=sys.stderr)
            return 2
        from mmpt_lite.pipeline import run_pipeline
        return run_pipeline(cfg, overrides, jobtype=args.jobtype, dryrun=args.dryrun, run_stage=launch_run,
                            ranks=local_ranks(cfg, args.jobtype))
    return launch_run(cfg, args.jobtype, args.dryrun)


def launch_run(cfg: RunConfig, jobtype: str, dryrun: bool) -> int:
    """One run of ``cfg`` (a plain config or one stage of a staged one) through ``jobtype``'s path."""
    try:
        task = get_task(cfg.train.task)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out_dir = resolve_path(cfg.train.output_dir)
    config_path = out_dir / "config.yaml"
    workdir = Path.cwd()
    if jobtype == "slurm":
        script = render_sbatch(cfg, config_path, workdir)
        script_path = resolve_path(cfg.launch.script_dir) / f"{cfg.launch.job_name}-{time.strftime('%Y%m%d-%H%M%S')}.sbatch"
        if dryrun:
            print(f"# sbatch script (would be written to {script_path})\n{script}")
            print(f"# resolved config (would be written to {config_path})\n{dump_config(cfg)}")
            return 0
        save_config(cfg, config_path)
        script_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(script_path, script)
        print(f"wrote sbatch script: {script_path}")
        if shutil.which("sbatch"):
            return subprocess.call(["sbatch", str(script_path)])
        print(f"sbatch not found on this machine; submit it on the cluster with: sbatch {script_path}")
        return 0

    cmd = build_command(cfg, jobtype, config_path)
    if dryrun:
        print("# command\n" + shlex.join(cmd))
        print(f"# resolved config (would be written to {config_path})\n{dump_config(cfg)}")
        return 0

    try:  # one run per folder, and no rank of a killed earlier run still writing it
        owner = lifetime.RunLock(out_dir).acquire()
        lifetime.wait_for_previous_ranks(out_dir)
    except lifetime.RunFolderBusy as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        return _run_locked(cfg, task, jobtype, cmd, out_dir, config_path)
    finally:
        owner.release()


def _run_locked(cfg: RunConfig, task, jobtype: str, cmd: list[str], out_dir: Path, config_path: Path) -> int:
    from mmpt_lite.train.logging import setup_logging

    setup_logging(0)
    print(describe_run(cfg, jobtype), flush=True)
    # Prepare shared inputs once, before any rank starts (ranks only read them). Inputs that live in the
    # corpus (e.g. an action lexicon) are checked here, once they exist.
    try:
        cfg = task.prepare(cfg, build=True).cfg  # derived paths (shards, word vectors) filled in
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    save_config(cfg, config_path)
    if jobtype == "local_single":  # the entry point in this process (a kill stops the run, no orphan)
        from mmpt_lite.train.main import run
        return run(cfg)
    env = dict(os.environ)
    if not env.get("OMP_NUM_THREADS"):  # torchrun's default (an empty value counts as unset): one core per rank
        env["OMP_NUM_THREADS"] = "1"
    env.update({lifetime.LAUNCHER_PID_ENV: str(os.getpid()), lifetime.RUN_DIR_ENV: str(out_dir.resolve()),
                lifetime.LOCK_HELD_ENV: str(out_dir)})
    return run_torchrun(cmd, env, out_dir)


def run_torchrun(cmd: list[str], env: dict[str, str], out_dir: Path) -> int:
    """Run torchrun as this launcher's child: it dies with the launcher, and the launcher passes signals on.

    torchrun runs in a session of its own, so a terminal's or scheduler's signal reaches the run once,
    through this process. SIGTERM and SIGUSR1 go to the ranks as SIGTERM (each writes its part of a
    checkpoint and stops; they exit 0, so torchrun ends quietly); SIGINT goes to torchrun. A launcher
    killed outright takes torchrun with it (PR_SET_PDEATHSIG) and the ranks follow within a second (their
    orphan watchdog). Returns torchrun's status, or 75 when the ranks stopped on a signal (they wrote
    ``preempted.json``).
    """
    started = time.time()
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=lifetime.die_with_parent)

    stop_pending = False

    def forward(signum, _frame):
        nonlocal stop_pending
        if signum == signal.SIGINT:
            proc.send_signal(signal.SIGINT)
        else:
            stop_pending = True  # delivered to the ranks below, as soon as torchrun has started them

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
    try:
        while True:
            try:
                status = proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                pass
            ranks = lifetime.child_pids(proc.pid) if stop_pending else []
            for pid in ranks:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            stop_pending = stop_pending and not ranks
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    marker = out_dir / "preempted.json"
    if read_marker(out_dir) is not None and marker.stat().st_mtime >= started - 1:
        return PREEMPTED_EXIT
    return status
