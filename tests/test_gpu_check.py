"""benchmarks/gpu_check.py: says so and exits 0 without a GPU; its guards and report need no GPU to test."""

import importlib.util
import subprocess
import sys

import pytest
import torch
from conftest import REPO


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible: the script would run every check")
def test_without_a_gpu_it_says_so_and_exits_0(tmp_path):
    r = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--out_dir", str(tmp_path)], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == ("gpu_check: no CUDA GPU present (torch.cuda.is_available() is False); "
                                "nothing to check, exiting 0")
    assert not list(tmp_path.iterdir())


def test_optional_paths_report_what_is_missing():
    check = load_gpu_check()
    assert check.feature_gap("no_such_package_xyz", "data", "loader", "dali") == "no_such_package_xyz is not importable"
    assert check.feature_gap("torch", "train", "no_such_key", "x") == "this checkout has no `train.no_such_key: x` switch"
    assert check.feature_gap("torch", "model", "video", "x")  # a section, not a switch
    assert check.config_choices("train", "precision") == ("auto", "fp32", "bf16")
    assert "train.compile" not in check.dotted_keys_named("zero_stage")
    assert check.dotted_keys_named("precision") == ["train.precision"]


def test_markdown_report_has_one_row_per_check_and_the_throughput_table():
    check = load_gpu_check()
    row = {"input": "synthetic", "compile": "on", "batch": 256, "videos_per_s": 812.5, "mfu": 0.41,
           "peak_memory_gib": 60.25, "loss": 0.9876}
    report = {"device": "NVIDIA H200", "gpus": 1, "date": "2026-01-01", "torch": "2.x", "cuda": "12.x", "wall_s": 480.0,
              "checks": {"attention": {"status": "not installed", "detail": "flash-attn is not installed", "seconds": 0.0},
                         "videomae": {"status": "ok", "detail": "1 rows", "header": "VideoMAE vit_b", "rows": [row],
                                      "seconds": 200.0}}}
    text = check.markdown(report)
    assert "| attention | not installed | flash-attn is not installed | 0 |" in text
    assert "| synthetic | on | 256 | 812.5 | 41.0% | 60.25 | 0.9876 |" in text
    assert check.slug("NVIDIA H200 (MIG 1g.18gb)") == "nvidia_h200_mig_1g_18gb"
