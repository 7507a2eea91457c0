"""train.precision resolution (mmpt_lite/precision.py) and a bf16-autocast training run on the CPU."""

import json

import pytest
import torch
from conftest import launch_tiny

from mmpt_lite import precision

ZEN4_FLAGS = "fpu sse2 avx2 fma avx512f avx512bw avx512_bf16 avx512_vnni"
SKYLAKE_FLAGS = "fpu sse2 avx2 fma avx512f avx512bw avx512_vnni"


@pytest.mark.parametrize("flags, native", [(ZEN4_FLAGS, True), (SKYLAKE_FLAGS, False),
                                           ("fpu avx2 amx_bf16 amx_tile", True), ("", False)])
def test_native_bf16_is_read_from_the_cpu_flags(flags, native):
    assert precision.cpu_flags_have_bf16(flags) is native


def test_explicit_precisions_win_and_auto_follows_the_hardware(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert precision.use_bf16("bf16", cpu) and not precision.use_bf16("fp32", gpu)
    assert precision.use_bf16("auto", gpu)
    for native in (True, False):
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda native=native: native)
        assert precision.use_bf16("auto", cpu) is native


def _losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def test_bf16_autocast_trains_on_cpu_close_to_fp32(tmp_path):
    """The same tiny run in fp32 and in bf16 autocast: finite losses that stay within bf16's rounding of fp32's."""
    data = tmp_path / "how2-synth"
    runs = {}
    for mode in ("fp32", "bf16"):
        out = tmp_path / mode
        r = launch_tiny([f"data.root={data}", f"train.output_dir={out}", f"train.precision={mode}",
                         "train.max_steps=6"])
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
        runs[mode] = _losses(out)
    fp32, bf16 = runs["fp32"], runs["bf16"]
    assert len(fp32) == len(bf16) == 6 and all(map(torch.isfinite, torch.tensor(bf16)))
    assert fp32 != bf16  # autocast really ran in bf16
    assert torch.allclose(torch.tensor(bf16), torch.tensor(fp32), rtol=0.05)
