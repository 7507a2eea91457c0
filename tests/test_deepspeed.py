"""train.strategy deepspeed: 2 CPU ranks with ZeRO on the tiny corpus through the launcher. The loss curve is
DDP's, a run resumed from a mid-run checkpoint ends on the same weights, evaluation and init_from read the
checkpoint, the non-finite guard holds, and a bad zero_stage names its key."""

import json

import pytest
import torch
from conftest import launch_tiny
from safetensors.torch import load_file

from mmpt_lite.checkpoint import RANK_STATE_DIR, latest_checkpoint, list_checkpoints, load_checkpoint
from mmpt_lite.config import ConfigError, load_config

STEPS = 6
# Clipping at 1.0 is active (the tiny run's gradient norm starts near 7) and two micro-batches per step use
# the trainer-owned accumulation boundary.
COMMON = [f"train.max_steps={STEPS}", "train.ckpt_every=2", "train.keep_last=3", "optim.grad_clip=1.0",
          "optim.accum_steps=2"]
# DDP all-reduces whole buckets, ZeRO reduce-scatters partitions and clips with its own formula: fp32 sums in a
# different order and ~1 ulp per clip. Over 6 Adam steps that stays far below this tolerance.
LOSS_RTOL = 1e-5


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The tiny how2-synth corpus, generated and sharded once by a single-step run."""
    root = tmp_path_factory.mktemp("how2")
    r = launch_tiny([f"data.root={root / 'data'}", f"train.output_dir={root / 'warm'}", "train.max_steps=1"])
    assert r.returncode == 0, r.stderr[-3000:]
    return root / "data"


@pytest.fixture(scope="module")
def runs(corpus, tmp_path_factory):
    """The same 2-rank run with DDP and with DeepSpeed ZeRO-1 and -2: {"ddp" | "zero1" | "zero2": out_dir}."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, strategy in (("ddp", ["train.strategy=ddp"]),
                           ("zero1", ["train.strategy=deepspeed", "train.zero_stage=1"]),
                           ("zero2", ["train.strategy=deepspeed", "train.zero_stage=2"])):
        out[name] = root / name
        r = launch_tiny([f"data.root={corpus}", f"train.output_dir={out[name]}", *COMMON, *strategy],
                        jobtype="local_small")
        assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return out


def metrics(out_dir) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def final_weights(out_dir) -> dict[str, torch.Tensor]:
    return load_file(str(latest_checkpoint(out_dir) / "model.safetensors"))


@pytest.mark.parametrize("name", ["zero1", "zero2"])
def test_zero_loss_curve_matches_ddp(runs, name):
    ddp, zero = metrics(runs["ddp"]), metrics(runs[name])
    assert [m["step"] for m in ddp] == [m["step"] for m in zero] == list(range(1, STEPS + 1))
    for a, b in zip(ddp, zero, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=LOSS_RTOL), (a, b)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=LOSS_RTOL), (a, b)
        assert b["lr"] == pytest.approx(a["lr"], rel=1e-12)  # the same schedule object steps in both
    assert ddp[0]["loss"] != ddp[-1]["loss"]  # it trained
    wa, wb = final_weights(runs["ddp"]), final_weights(runs[name])
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-5, msg=k)


def test_checkpoint_holds_fp32_weights_and_per_rank_optimizer_state(runs):
    ckpt = load_checkpoint(latest_checkpoint(runs["zero2"]))
    assert ckpt["meta"]["step"] == STEPS
    assert ckpt["train_state"]["optimizer"] == {"strategy": "deepspeed", "zero_stage": 2, "world_size": 2}
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in ckpt["model"].values())
    step_folder = latest_checkpoint(runs["zero2"])
    assert sorted(p.name for p in (step_folder / RANK_STATE_DIR).iterdir()) == ["rank_00000.pt", "rank_00001.pt"]
    assert not list(step_folder.parent.glob(".tmp*"))  # staging folders were moved into the step folders
    assert len(list_checkpoints(runs["zero2"])) == 3


def test_resume_from_mid_run_checkpoint_matches_uninterrupted(runs, corpus, tmp_path):
    mid = runs["zero2"] / "checkpoints" / "step_00000004"
    r = launch_tiny([f"data.root={corpus}", f"train.output_dir={tmp_path}", *COMMON, "train.strategy=deepspeed",
                     f"train.resume={mid}"], jobtype="local_small")
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert "resumed from" in r.stderr
    assert [m["step"] for m in metrics(tmp_path)] == [5, 6]
    a, b = final_weights(runs["zero2"]), final_weights(tmp_path)
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume from step 4"
    ref = {m["step"]: m["loss"] for m in metrics(runs["zero2"])}
    assert all(m["loss"] == ref[m["step"]] for m in metrics(tmp_path))


def test_evaluation_and_init_from_read_the_checkpoint(runs):
    from mmpt_lite.evaluation.checkpoints import load_model
    from mmpt_lite.models.init_from import init_video_tower

    out = runs["zero2"]
    saved = final_weights(out)
    loaded = load_model(out)
    for name, value in loaded.model.state_dict().items():
        assert torch.equal(value, saved[name]), name
    fresh = load_model(out, random_init=True).model  # the same architecture, to initialise from the run
    report = init_video_tower(fresh, out, strict=True)
    assert "missing keys: none" in report
    for name, value in fresh.video_tower.state_dict().items():
        assert torch.equal(value, saved[f"video_tower.{name}"]), name


def test_nonfinite_guard_under_deepspeed(corpus, tmp_path):
    # lr=1e30 blows the weights up after one update: every following loss is NaN and must be skipped.
    r = launch_tiny([f"data.root={corpus}", f"train.output_dir={tmp_path}", "train.max_steps=20",
                     "train.strategy=deepspeed", "optim.lr=1e30", "optim.warmup_steps=0", "optim.grad_clip=0",
                     "train.max_nonfinite=3", "train.ckpt_every=1"], jobtype="local_small")
    log = r.stdout + r.stderr
    # Each rank exits with status 3 (as a local_single run does); torchrun reports that and exits 1 itself.
    assert r.returncode != 0 and "exitcode  : 3" in log, log[-3000:]
    for rank in (0, 1):  # both ranks agreed on every skip and stop together
        assert f"[rank{rank}] 3 non-finite steps in a row at step 1 (train.max_nonfinite=3); stopping" in log, log
    for ck in list_checkpoints(tmp_path):
        assert all(torch.isfinite(v).all() for v in load_checkpoint(ck)["model"].values()), f"NaN saved in {ck}"


def test_invalid_zero_stage_names_the_key(repo_root):
    with pytest.raises(ConfigError, match=r"train\.zero_stage: 3 must be 1 or 2"):
        load_config(repo_root / "projects" / "debug_tiny.yaml", ["train.zero_stage=3"])
    r = launch_tiny(["train.strategy=deepspeed", "train.zero_stage=0"], dryrun=True)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error: --set train.zero_stage=0: train.zero_stage: 0 must be 1 or 2"), r.stderr


def test_ddp_refuses_a_deepspeed_checkpoint(tmp_path):
    from mmpt_lite.config import RunConfig
    from mmpt_lite.train.optim import build_optimizer, build_scheduler
    from mmpt_lite.train.strategy import DdpStrategy

    cfg = RunConfig()
    model = torch.nn.Linear(2, 2)
    optimizer = build_optimizer(cfg.optim, [model])
    strategy = DdpStrategy(cfg, model, optimizer, build_scheduler(optimizer, cfg.optim, 10), torch.device("cpu"))
    with pytest.raises(ConfigError, match=r"^train\.strategy: .* was written with train\.strategy=deepspeed"):
        strategy.load_state({"strategy": "deepspeed", "zero_stage": 2, "world_size": 2}, tmp_path)


def test_bf16_autocast_reaches_the_engine_forward(corpus, tmp_path):
    """precision bf16: the engine runs the model under bf16 autocast as DDP does (its forward would otherwise
    switch an outer autocast off and silently train in fp32)."""
    first = {}
    for name, overrides in (("ddp_bf16", ["train.precision=bf16"]),
                            ("ds_bf16", ["train.precision=bf16", "train.strategy=deepspeed"]),
                            ("ds_fp32", ["train.precision=fp32", "train.strategy=deepspeed"])):
        r = launch_tiny([f"data.root={corpus}", f"train.output_dir={tmp_path / name}", "train.max_steps=2",
                         *overrides])
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
        first[name] = [m["loss"] for m in metrics(tmp_path / name)]
    assert first["ds_bf16"] == pytest.approx(first["ddp_bf16"], rel=1e-5)
    assert abs(first["ds_bf16"][0] - first["ds_fp32"][0]) > 1e-4  # bf16 arithmetic, not fp32
