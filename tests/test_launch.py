"""locallaunch.py: every job type's --dryrun, the sbatch script, and the README/CI command pairing."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from mmpt_lite.config import ConfigError, load_config
from mmpt_lite.launch import build_command
from mmpt_lite.slurm import render_sbatch

REPO_ROOT = Path(__file__).resolve().parents[1]


def dryrun(repo_root, *args):
    return subprocess.run([sys.executable, "locallaunch.py", "projects/how2_pretrain.yaml", "--dryrun", *args],
                          cwd=repo_root, capture_output=True, text=True)


@pytest.mark.parametrize("jobtype,nproc", [("local_single", None), ("local_small", 2), ("local_big", 8)])
def test_local_dryrun_prints_command_and_config(repo_root, jobtype, nproc):
    r = dryrun(repo_root, "--jobtype", jobtype)
    assert r.returncode == 0, r.stderr
    cmd_line = r.stdout.split("# command\n", 1)[1].splitlines()[0]
    argv = shlex.split(cmd_line)
    assert argv[0] == sys.executable and "mmpt_lite.train.main" in argv
    if nproc is None:
        assert "torch.distributed.run" not in argv
    else:
        assert "torch.distributed.run" in argv and f"--nproc_per_node={nproc}" in argv
    assert "# resolved config" in r.stdout and "preset: vit_tiny" in r.stdout


def test_dryrun_writes_nothing(repo_root, tmp_path):
    out = tmp_path / "run"
    r = dryrun(repo_root, "--jobtype", "local_small", "--set", f"train.output_dir={out}")
    assert r.returncode == 0 and not out.exists()


def test_slurm_dryrun_script(repo_root, tmp_path):
    r = dryrun(repo_root, "--jobtype", "slurm", "--nodes", "4", "--gpus_per_node", "8", "--partition", "gpu",
               "--time", "12:00:00", "--set", f"launch.script_dir={tmp_path}", "--set", "stages.order=[]")
    assert r.returncode == 0, r.stderr
    s = r.stdout
    for line in ["#SBATCH --nodes=4", "#SBATCH --gpus-per-node=8", "#SBATCH --partition=gpu",
                 "#SBATCH --time=12:00:00", "#SBATCH --ntasks-per-node=1", "#SBATCH --requeue",
                 "#SBATCH --signal=B:USR1@120", "export OMP_NUM_THREADS=1"]:  # 10 CPUs // 8 ranks
        assert line in s.splitlines()
    assert re.search(r"srun .*--cpus-per-task=10 .*torch\.distributed\.run .*--nnodes=\$SLURM_NNODES .*--nproc_per_node=8", s)
    assert "--rdzv_backend=c10d" in s and "MASTER_ADDR=$(scontrol show hostnames" in s
    assert not list(tmp_path.iterdir())  # dryrun: nothing written


@pytest.mark.parametrize("nproc,ranks,threads", [(0, 1, 6), (3, 3, 2)])
def test_slurm_cpu_only_script(repo_root, tmp_path, nproc, ranks, threads):
    """launch.gpus_per_node=0: no GPU request (sbatch refuses any gres on a node without GPUs), ranks per node
    from launch.nproc_per_node (auto: 1), the task's CPUs shared out as OMP threads."""
    cfg = load_config(repo_root / "projects/debug_tiny.yaml", [
        "launch.gpus_per_node=0", "launch.cpus_per_task=6", f"launch.nproc_per_node={nproc}"])
    script = render_sbatch(cfg, tmp_path / "c.yaml", repo_root)
    assert "--gpus-per-node" not in script and f"--nproc_per_node={ranks} " in script
    assert f"export OMP_NUM_THREADS={threads}" in script.splitlines()


@pytest.mark.parametrize("override,message", [
    ("launch.time=3:xx", "launch.time: '3:xx' is not a slurm time (minutes, H:M:S or D-H:M:S)"),
    ("launch.mem=lots", "launch.mem: 'lots' is not a slurm memory size (e.g. 64G, 500M; 0 = whole node)"),
    ("launch.signal_seconds=600", "launch.signal_seconds: 600 s before the end leaves no time to train in "
                                  "launch.time=10:00"),
    ("launch.nproc_per_node=16", "launch.nproc_per_node: 16 ranks per node would share launch.gpus_per_node=8 "
                                 "GPUs; use at most one rank per GPU"),
    ("launch.cpus_per_task=4", "launch.cpus_per_task: 4 CPUs cannot hold 8 ranks per node (launch.nproc_per_node, "
                               "auto = launch.gpus_per_node); give each rank at least one CPU"),
], ids=["time", "mem", "signal", "ranks_per_gpu", "ranks_per_cpu"])
def test_slurm_bad_launch_values_name_the_key(repo_root, tmp_path, override, message):
    with pytest.raises(ConfigError) as err:
        cfg = load_config(repo_root / "projects/debug_tiny.yaml", ["launch.time=10:00", override])
        render_sbatch(cfg, tmp_path / "c.yaml", repo_root)
    assert str(err.value).endswith(message), err.value


def test_slurm_refuses_a_staged_recipe(repo_root, tmp_path):
    """slurm submits one run: a staged config is refused in one line (each stage is its own job)."""
    r = dryrun(repo_root, "--jobtype", "slurm", "--set", f"launch.script_dir={tmp_path}")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith("error: stages.order:") and "--set stages.order=[]" in r.stderr
    assert not list(tmp_path.iterdir())


def test_slurm_writes_script_that_bash_parses(repo_root, tmp_path):
    """Without sbatch on PATH the script is written (atomically) and its location printed; nothing is
    prepared (the inputs are made where the job is submitted)."""
    env = dict(os.environ, PATH=str(tmp_path / "no_slurm_here"))
    r = subprocess.run([sys.executable, "locallaunch.py", "projects/milnce_s3d_howto100m.yaml", "--jobtype", "slurm",
                        "--set", f"launch.script_dir={tmp_path}", "--set", f"train.output_dir={tmp_path / 'run'}"],
                       cwd=repo_root, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    scripts = list(tmp_path.glob("*.sbatch"))
    assert len(scripts) == 1 and str(scripts[0]) in r.stdout and "sbatch not found" in r.stdout
    assert subprocess.run(["bash", "-n", str(scripts[0])]).returncode == 0
    assert load_config(tmp_path / "run" / "config.yaml").model.video.preset == "s3d"


def test_build_command_and_script_functions(repo_root, tmp_path):
    cfg = load_config(repo_root / "projects/how2_pretrain.yaml", ["launch.nproc_local_small=3"])
    assert "--nproc_per_node=3" in build_command(cfg, "local_small", tmp_path / "c.yaml")
    script = render_sbatch(cfg, tmp_path / "c.yaml", repo_root)
    assert script.startswith("#!/bin/bash") and str(tmp_path / "c.yaml") in script
    with pytest.raises(ValueError, match="valid"):
        build_command(cfg, "slurm", tmp_path / "c.yaml")


def test_bad_jobtype_exits_2(repo_root):
    r = dryrun(repo_root, "--jobtype", "cloud")
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_readme_commands_and_ci_agree(repo_root):
    """.ci/run must run exactly the README's test command."""
    readme = (repo_root / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    commands = [line for b in blocks for line in b.splitlines() if line.strip() and not line.startswith("#")]
    test_cmd = next(c for c in commands if "pytest" in c)
    main_cmd = next(c for c in commands if "locallaunch.py projects/how2_pretrain.yaml --jobtype local_small" in c)
    ci = (repo_root / ".ci" / "run").read_text()
    assert test_cmd.strip() in ci.splitlines()
    assert "pip install" in main_cmd and "pip install" in test_cmd


@pytest.mark.parametrize("project", sorted(p.name for p in (REPO_ROOT / "projects").glob("*.yaml")))
def test_every_project_dryruns(repo_root, project):
    """Every shipped recipe validates and renders a launch command without its data being present."""
    r = subprocess.run([sys.executable, "locallaunch.py", f"projects/{project}", "--jobtype", "local_big", "--dryrun"],
                       cwd=repo_root, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "torch.distributed.run" in r.stdout and "# resolved config" in r.stdout


def test_first_line_names_the_task():
    from mmpt_lite.launch import describe_run
    milnce = describe_run(load_config(REPO_ROOT / "projects" / "how2_pretrain.yaml"), "local_small")
    assert "video=vit_tiny" in milnce and "text=word2vec" in milnce and "loss milnce" in milnce
    assert "size default, random training hues, 3000 training videos) at" in milnce
    plain = describe_run(load_config(REPO_ROOT / "projects" / "how2_pretrain.yaml", [
        "data.synthetic.train_hue=task", "data.synthetic.train_videos=0"]), "local_small")
    assert "size default) at" in plain
    mae = describe_run(load_config(REPO_ROOT / "projects" / "videomae_cpu.yaml"), "local_single")
    assert "masked pretraining: tube masking 0.9, decoder depth 4" in mae and "loss" not in mae


def test_unknown_task_names_the_valid_ones(repo_root):
    r = dryrun(repo_root, "--set", "train.task=clip")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["error: --set train.task=clip: train.task: 'clip' is not one of 'milnce', 'mae', 'umt', "
                                             "'classify'"], r.stderr


def test_every_task_module_provides_describe_prepare_build():
    from mmpt_lite.train.tasks import TASKS, get_task
    cfg = load_config(REPO_ROOT / "projects" / "debug_tiny.yaml")
    for name in TASKS:
        module = get_task(name)
        assert callable(module.prepare) and callable(module.build)
        assert module.describe(cfg).startswith("video=vit_tiny_p8")
