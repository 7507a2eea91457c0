"""train.compile: the inductor-compiled model follows the eager loss curve and saves plain, loadable weights."""

import json

import torch
from conftest import launch_tiny
from safetensors.torch import load_file

from mmpt_lite.checkpoint import latest_checkpoint
from mmpt_lite.evaluation.checkpoints import load_model

STEPS = 4


def losses(out_dir) -> list[float]:
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows if row["kind"] == "train"]


def test_compiled_run_matches_eager_and_saves_plain_weights(tmp_path):
    common = [f"data.root={tmp_path / 'how2'}", f"train.max_steps={STEPS}", "train.log_every=1"]
    eager = launch_tiny(common + [f"train.output_dir={tmp_path / 'eager'}"])
    assert eager.returncode == 0, eager.stderr[-3000:]
    compiled = launch_tiny(common + [f"train.output_dir={tmp_path / 'compiled'}", "train.compile=true"])
    assert compiled.returncode == 0, compiled.stderr[-3000:]

    a, b = losses(tmp_path / "eager"), losses(tmp_path / "compiled")
    assert len(a) == len(b) == STEPS
    torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=1e-4, atol=1e-5)

    plain = load_file(str(latest_checkpoint(tmp_path / "eager") / "model.safetensors"))
    weights = load_file(str(latest_checkpoint(tmp_path / "compiled") / "model.safetensors"))
    assert weights.keys() == plain.keys() and not any("_orig_mod" in k for k in weights)
    for key in plain:
        torch.testing.assert_close(weights[key], plain[key], rtol=1e-3, atol=1e-4)
    loaded = load_model(tmp_path / "compiled")  # strict load into a freshly built model
    torch.testing.assert_close(loaded.model.state_dict()["video_proj.weight"], weights["video_proj.weight"])
