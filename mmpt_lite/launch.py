"""Job launching: one resolved config, four job types.

local_single  the training entry point in this process (one rank)
local_small   torchrun with ``launch.nproc_local_small`` processes (2; gloo on CPU, nccl on GPU)
local_big     torchrun over every local GPU (``launch.nproc_local_big``, 8, when none is visible)
slurm         an sbatch script (mmpt_lite.slurm): one srun task per node, each running torchrun with the
              c10d rendezvous on the first node of the allocation; checked against the partition, the
              inputs prepared here, then submitted with sbatch when present (--wait follows the job)

Workers never re-read the user's YAML: the launcher writes the resolved config to
``<train.output_dir>/config.yaml`` and every rank loads that file, so what ran is what was saved.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from mmpt_lite import lifetime
from mmpt_lite.config import ConfigError, RunConfig, dump_config, load_config, resolve_path, save_config
from mmpt_lite.slurm import launch_slurm
from mmpt_lite.train.preemption import PREEMPTED_EXIT, read_marker
from mmpt_lite.train.tasks import get_task

JOB_TYPES = ("local_single", "local_small", "local_big", "slurm")
TRAIN_MODULE = "mmpt_lite.train.main"
# slurm conveniences on the command line; each is the same as --set launch.<name>=...
SLURM_OPTIONS = ("nodes", "gpus_per_node", "nproc_per_node", "cpus_per_task", "mem", "partition", "time", "account")


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
    """The process command for a local job type (slurm: :func:`mmpt_lite.slurm.render_sbatch`)."""
    if jobtype == "local_single":
        return [sys.executable, "-m", TRAIN_MODULE, str(config_path)]
    return _torchrun(local_ranks(cfg, jobtype), config_path)


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
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])  # prog: locallaunch.py or "mmpt-lite train"
    p.add_argument("config", help="run config YAML (projects/*.yaml)")
    p.add_argument("--jobtype", choices=JOB_TYPES, default="local_single")
    p.add_argument("--dryrun", action="store_true", help="print the command/script and resolved config; launch nothing")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.max_steps=200 (repeatable)")
    for name in SLURM_OPTIONS:
        p.add_argument(f"--{name}", default=None)
    p.add_argument("--wait", action="store_true",
                   help="slurm: follow the job (its log streamed) until it ends and exit with its status")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    overrides = list(args.overrides)
    overrides += [f"launch.{n}={getattr(args, n)}" for n in SLURM_OPTIONS if getattr(args, n) is not None]
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
    return launch_run(cfg, args.jobtype, args.dryrun, wait=args.wait)


def launch_run(cfg: RunConfig, jobtype: str, dryrun: bool, *, wait: bool = False) -> int:
    """One run of ``cfg`` (a plain config or one stage of a staged one) through ``jobtype``'s path; ``wait``:
    a slurm job is followed to its end (its exit status is returned)."""
    try:
        task = get_task(cfg.train.task)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out_dir = resolve_path(cfg.train.output_dir)
    config_path = out_dir / "config.yaml"
    workdir = Path.cwd()
    if jobtype == "slurm":
        return _launch_slurm(cfg, task, config_path, workdir, dryrun=dryrun, wait=wait)

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


def _launch_slurm(cfg: RunConfig, task, config_path: Path, workdir: Path, *, dryrun: bool, wait: bool) -> int:
    """The slurm job type (mmpt_lite.slurm), its errors as one line: 2 for the config, 1 for the cluster."""
    def prepare(c: RunConfig) -> RunConfig:
        from mmpt_lite.train.logging import setup_logging

        setup_logging(0)
        print(describe_run(c, "slurm"), flush=True)
        return task.prepare(c, build=True).cfg  # once, here: ranks on every node only read the inputs

    try:
        return launch_slurm(cfg, config_path, workdir, dryrun=dryrun, wait=wait, prepare=prepare)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, RuntimeError) as exc:  # preparing the inputs, or a slurm command
        print(f"error: {exc}", file=sys.stderr)
        return 1
