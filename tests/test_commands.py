"""The ``mmpt-lite`` console command (installed by ``pip install -e .``) wraps the existing entry points."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mmpt_lite.commands import COMMANDS, main

REPO = Path(__file__).resolve().parents[1]


def run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def mmpt_lite() -> str:
    exe = shutil.which("mmpt-lite")
    assert exe, "mmpt-lite is not on PATH: `pip install -e .` installs it (setup.py console_scripts)"
    return exe


def test_help_lists_every_sub_command(mmpt_lite):
    r = run(mmpt_lite, "--help")
    assert r.returncode == 0
    for name in ("train", "eval", "shard", "synth", "flops", "index", "search", "serve"):
        assert f"\n  {name} " in r.stdout, r.stdout
    assert set(COMMANDS) == {"train", "eval", "shard", "synth", "flops", "index", "search", "serve"}


def test_every_sub_command_answers_help(capsys, monkeypatch):
    # In this process (the dispatch is what is under test; the installed script is run by the other tests):
    # one interpreter instead of eight keeps it quick.
    monkeypatch.setattr(sys, "argv", ["mmpt-lite"])  # the dispatcher names argparse's prog through sys.argv[0]
    for name in COMMANDS:
        args = [name, "msrvtt", "--help"] if name == "eval" else [name, "--help"]
        with pytest.raises(SystemExit) as done:
            main(args)
        out = capsys.readouterr().out
        assert done.value.code == 0 and out.startswith("usage: "), (name, out[-500:])
        if name != "eval":
            assert out.startswith(f"usage: mmpt-lite {name}"), (name, out[:200])


def test_unknown_command_and_evaluator_exit_2_in_one_line(mmpt_lite):
    r = run(mmpt_lite, "trian")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "'trian'" in r.stderr and "train" in r.stderr
    r = run(mmpt_lite, "eval", "msrvt")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "msrvtt" in r.stderr


def test_train_and_flops_print_what_the_scripts_print(mmpt_lite):
    same = [(["train", "projects/debug_tiny.yaml", "--dryrun", "--set", "train.max_steps=7"],
             ["locallaunch.py", "projects/debug_tiny.yaml", "--dryrun", "--set", "train.max_steps=7"]),
            (["flops", "projects/x3d_s_kinetics.yaml"], ["scripts/count_flops.py", "projects/x3d_s_kinetics.yaml"])]
    for sub, script in same:
        a, b = run(mmpt_lite, *sub), run(sys.executable, *script)
        assert a.returncode == b.returncode == 0, (a.stderr[-2000:], b.stderr[-2000:])
        # the interpreter's path may be spelled differently (python vs python3.11); the rest must be equal
        assert [ln for ln in a.stdout.splitlines() if "-m mmpt_lite" not in ln] == \
            [ln for ln in b.stdout.splitlines() if "-m mmpt_lite" not in ln]
    assert "max_steps: 7" in a.stdout or "1,962,892,112 multiply-adds" in a.stdout


def test_bad_config_through_train_is_one_line_exit_2(mmpt_lite, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: " + str(REPO / "projects/how2_pretrain.yaml") + "\ntrain: {max_stepz: 3}\n")
    r = run(mmpt_lite, "train", str(bad), "--dryrun")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "train.max_stepz" in r.stderr
