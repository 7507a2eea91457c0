"""End-to-end training on the tiny synthetic corpus: a 2-rank gloo run, exact resume after SIGKILL,
the non-finite guard, and the warmup + cosine schedule."""

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import launch_tiny, sigkill_after_checkpoint
from safetensors.torch import load_file

from mmpt_lite.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from mmpt_lite.config import load_config
from mmpt_lite.train.optim import warmup_cosine

REPO = Path(__file__).resolve().parents[1]



@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The tiny how2-synth corpus, generated, sharded and word2vec'd once by a dry single-step run."""
    root = tmp_path_factory.mktemp("how2")
    data = root / "how2-synth"
    r = run_launch("local_single", [f"data.root={data}", f"train.output_dir={root / 'warm'}", "train.max_steps=1"])
    assert r.returncode == 0, r.stderr[-3000:]
    return data


def run_launch(jobtype, overrides, *, popen=False):
    return launch_tiny(overrides, jobtype=jobtype, popen=popen)


def test_first_line_names_data_and_preset(corpus, tmp_path):
    # Also covers the word2vec-initialised vocabulary (the fixture run used the default word_init).
    r = run_launch("local_single", [f"data.root={corpus}", f"train.output_dir={tmp_path}", "train.max_steps=1",
                                    "model.text.word_init=word2vec"])
    assert r.returncode == 0, r.stderr[-3000:]
    first = r.stdout.splitlines()[0]
    assert first.startswith("mmpt_lite local_single: data how2-synth") and "video=vit_tiny" in first
    saved = load_config(tmp_path / "config.yaml")  # resolved config beside the run, derived paths filled in
    assert saved.data.shard_root and Path(saved.model.text.path).is_file()


def test_two_rank_gloo_run(corpus, tmp_path):
    r = run_launch("local_small", [f"data.root={corpus}", f"train.output_dir={tmp_path}", "train.max_steps=3",
                                   "train.ckpt_every=3"])
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    ckpt = load_checkpoint(latest_checkpoint(tmp_path))
    assert ckpt["meta"]["step"] == 3 and ckpt["train_state"]["world_size"] == 2
    assert len(ckpt["train_state"]["rng_by_rank"]) == 2
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and '"videos_per_s"' in lines[-1]


def test_action_negatives_on_two_ranks_and_a_bad_lexicon(corpus, tmp_path):
    r = run_launch("local_small", [f"data.root={corpus}", f"train.output_dir={tmp_path / 'neg'}", "train.max_steps=3",
                                   "data.action_negatives.count=3", "data.action_negatives.pool=all"])
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    records = [json.loads(line) for line in (tmp_path / "neg" / "metrics.jsonl").read_text().splitlines()]
    assert all(0.0 <= rec["negative_win"] <= 1.0 for rec in records), records
    assert all(torch.isfinite(v).all() for v in final_weights(tmp_path / "neg").values())
    r = run_launch("local_single", [f"data.root={corpus}", f"train.output_dir={tmp_path / 'bad'}", "train.max_steps=1",
                                    "data.action_negatives.count=3", f"data.action_negatives.lexicon={tmp_path}/no.tsv"])
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: data.action_negatives.lexicon: {tmp_path}/no.tsv is not a lexicon "
                                             "file (one line per action: 'action<TAB>phrase | phrase ...')"], r.stderr[-2000:]


def final_weights(out_dir):
    return load_file(str(latest_checkpoint(out_dir) / "model.safetensors"))


def test_sigkill_then_resume_matches_uninterrupted(corpus, tmp_path):
    steps = 30  # long enough that the kill lands mid-run (a step takes tens of ms here)
    common = [f"data.root={corpus}", f"train.max_steps={steps}", "train.ckpt_every=2", "train.keep_last=2"]
    ref = run_launch("local_single", common + [f"train.output_dir={tmp_path / 'ref'}"])
    assert ref.returncode == 0, ref.stderr[-3000:]

    out = tmp_path / "killed"
    rng = np.random.default_rng(int(time.time()))
    kill_after = int(rng.integers(2, 4)) * 2  # a checkpointed step; the process dies somewhere after it
    proc = run_launch("local_single", common + [f"train.output_dir={out}"], popen=True)
    killed_at = sigkill_after_checkpoint(proc, out, kill_after, rng)
    assert killed_at < steps, "the run finished before it could be killed; make it longer"

    resumed = run_launch("local_single", common + [f"train.output_dir={out}"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    a, b = final_weights(tmp_path / "ref"), final_weights(out)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume from step {killed_at}"
    assert len(list_checkpoints(out)) == 2  # keep_last


def test_nonfinite_guard_stops_without_saving(corpus, tmp_path):
    # lr=1e30 blows the weights up after one update: every following loss is NaN and must be skipped.
    r = run_launch("local_single", [f"data.root={corpus}", f"train.output_dir={tmp_path}", "train.max_steps=20",
                                    "optim.lr=1e30", "optim.warmup_steps=0", "optim.grad_clip=0",
                                    "train.max_nonfinite=3", "train.ckpt_every=1"])
    assert r.returncode == 3, r.stderr[-2000:]
    assert "non-finite" in r.stderr
    for ck in list_checkpoints(tmp_path):
        assert all(torch.isfinite(v).all() for v in load_checkpoint(ck)["model"].values()), f"NaN saved in {ck}"


def test_warmup_cosine():
    lrs = [warmup_cosine(s, warmup_steps=4, total_steps=20, base_lr=1.0, min_lr=0.1) for s in range(21)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert abs(lrs[4] - 1.0) < 1e-12 and abs(lrs[20] - 0.1) < 1e-12
    assert all(x >= y for x, y in zip(lrs[4:], lrs[5:], strict=False))


def test_retrieval_augmented_batches_with_infonce_on_two_ranks(corpus, tmp_path):
    """VideoCLIP's mined batches drive a 2-rank InfoNCE run: mined at the start of every epoch from 1 on."""
    r = run_launch("local_small", [f"data.root={corpus}", f"train.output_dir={tmp_path}", "train.max_steps=4",
                                   "data.batch_size=1", "loss.name=infonce", "data.action_negatives.count=0",
                                   "retri.enabled=true",
                                   "retri.start_epoch=1", "retri.every_epochs=1", "retri.index=flat",
                                   "retri.clips_per_video=1", "train.ckpt_every=4"])
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "retri.jsonl").read_text().splitlines()]
    mined = [row for row in rows if row["mined_fresh"]]
    assert [row["epoch"] for row in mined] == [1]  # 6 videos / (2 ranks x 1) = 3 steps per epoch
    ckpt = load_checkpoint(latest_checkpoint(tmp_path))
    assert ckpt["meta"]["step"] == 4 and "plan" in ckpt["train_state"]["data_position"]  # the mined plan is checkpointed
