"""NORTON losses (mmpt_lite/losses/norton.py) against POT and direct re-statements."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmpt_lite.config import LossConfig
from mmpt_lite.losses.build import build_loss
from mmpt_lite.losses.infonce import InfoNCELoss
from mmpt_lite.losses.norton import (
    NortonLoss,
    add_prompt_bucket,
    bucket_plan,
    faulty_negative_targets,
    norton_clip_loss,
    sinkhorn_log,
    token_similarity,
    video_paragraph_loss,
)

ot = pytest.importorskip("ot")  # POT, the reference Sinkhorn (dev extra)
# stopThr=0 makes POT run all 50 iterations (as ours do), and it then warns that it did not converge.
pytestmark = pytest.mark.filterwarnings("ignore:Sinkhorn did not converge")


@pytest.mark.parametrize("shape,epsilon", [((6, 6), 1.0), ((5, 7), 0.5), ((8, 4), 0.2)])
def test_sinkhorn_plan_matches_pot_and_its_marginals(shape, epsilon):
    gen = torch.Generator().manual_seed(sum(shape))
    scores = torch.randn(*shape, generator=gen, dtype=torch.float64)
    a = torch.rand(shape[0], generator=gen, dtype=torch.float64) + 0.5
    b = torch.rand(shape[1], generator=gen, dtype=torch.float64) + 0.5
    a, b = a / a.sum(), b / b.sum()
    for row, col in ((None, None), (a, b)):
        plan = sinkhorn_log(scores, epsilon, 50, row, col)
        ra = np.full(shape[0], 1 / shape[0]) if row is None else row.numpy()
        cb = np.full(shape[1], 1 / shape[1]) if col is None else col.numpy()
        # POT takes a cost M with kernel exp(-M / reg): similarities S map to M = -S, epsilon to reg.
        reference = ot.sinkhorn(ra, cb, -scores.numpy(), reg=epsilon, numItermax=50, stopThr=0.0)
        assert np.allclose(plan.numpy(), reference, atol=1e-5, rtol=0)
        assert np.allclose(plan.sum(1).numpy(), ra, atol=1e-6)
        assert np.allclose(plan.sum(0).numpy(), cb, atol=1e-4)  # after 50 iterations; rows are exact


def test_sinkhorn_float32_batched_equals_per_matrix():
    scores = torch.randn(3, 5, 5, generator=torch.Generator().manual_seed(1))
    plan = sinkhorn_log(scores, 0.1, 50)
    assert plan.dtype == torch.float32
    for i in range(3):
        reference = ot.sinkhorn(np.full(5, 0.2), np.full(5, 0.2), -scores[i].double().numpy(), reg=0.1,
                                numItermax=50, stopThr=0.0, method="sinkhorn_log")
        assert np.allclose(plan[i].numpy(), reference, atol=1e-5)


def test_faulty_negative_targets_both_directions():
    scores = torch.randn(6, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 3
    v2t, t2v = faulty_negative_targets(scores, beta=0.3, epsilon=1.0, iterations=50)
    q = 6 * torch.from_numpy(ot.sinkhorn(np.full(6, 1 / 6), np.full(6, 1 / 6), -scores.numpy(), reg=1.0,
                                         numItermax=50, stopThr=0.0))
    eye = torch.eye(6, dtype=torch.float64)
    assert torch.allclose(v2t, 0.3 * q + 0.7 * eye, atol=1e-6)
    assert torch.allclose(t2v, 0.3 * q.t() + 0.7 * eye, atol=1e-6)
    assert torch.allclose(v2t.sum(1), torch.ones(6, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(t2v.sum(1), torch.ones(6, dtype=torch.float64), atol=1e-4)


def test_clip_loss_restated_and_beta_zero_is_infonce():
    gen = torch.Generator().manual_seed(3)
    video, text = torch.randn(8, 16, generator=gen), torch.randn(8, 16, generator=gen)
    inv_t = 1 / 0.07
    out = norton_clip_loss(video_embedding=video, text_embedding=text, inv_temperature=inv_t, beta=0.3)
    logits = inv_t * F.normalize(video, dim=-1) @ F.normalize(text, dim=-1).t()
    v2t, t2v = faulty_negative_targets(logits, 0.3, 1.0, 50)
    direct = 0.5 * (-(v2t * logits.log_softmax(1)).sum(1).mean() - (t2v * logits.t().log_softmax(1)).sum(1).mean())
    assert torch.allclose(out["loss"], direct, atol=1e-5)
    zero = norton_clip_loss(video_embedding=video, text_embedding=text, inv_temperature=inv_t, beta=0.0)
    infonce = InfoNCELoss(temperature=0.07)(video_embedding=video, text_embedding=text)
    assert torch.allclose(zero["loss"], infonce["loss"], atol=1e-5)


def test_gradients_flow_through_similarities_not_the_plan():
    gen = torch.Generator().manual_seed(4)
    video = torch.randn(6, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    text = torch.randn(6, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    loss = norton_clip_loss(video_embedding=video, text_embedding=text, inv_temperature=10.0)["loss"]
    (grad,) = torch.autograd.grad(loss, video)
    # The same loss with the targets frozen as constants: identical gradient, so none goes through Sinkhorn.
    logits = 10.0 * F.normalize(video, dim=-1) @ F.normalize(text, dim=-1).t()
    v2t, t2v = (t.detach() for t in faulty_negative_targets(logits.detach(), 0.3, 1.0, 50))
    frozen = 0.5 * (-(v2t * logits.log_softmax(1)).sum(1).mean() - (t2v * logits.t().log_softmax(1)).sum(1).mean())
    (frozen_grad,) = torch.autograd.grad(frozen, video)
    assert torch.allclose(grad, frozen_grad, atol=1e-10)
    v3, t3 = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True), torch.randn(2, 3, 8, dtype=torch.float64)
    paragraph = video_paragraph_loss(video_embedding=v3, text_embedding=t3)
    paragraph["loss"].backward()
    assert v3.grad is not None and torch.isfinite(v3.grad).all()


def test_prompt_bucket_value_and_absorption():
    gen = torch.Generator().manual_seed(5)
    scores = torch.rand(4, 4, generator=gen, dtype=torch.float64) * 0.2
    scores.diagonal().copy_(torch.tensor([0.9, 0.8, 0.85, 0.95], dtype=torch.float64))
    extended, value = add_prompt_bucket(scores, percentile=30)
    assert value.item() == pytest.approx(np.percentile(scores.diagonal().numpy(), 30))
    assert extended.shape == (5, 5) and torch.all(extended[4] == value) and torch.all(extended[:, 4] == value)
    assert torch.equal(extended[:4, :4], scores)
    # Clip 2 (column 2) matches no caption (all its similarities far below the bucket): its mass goes to the bucket.
    scores[:, 2] = -0.5
    plan = bucket_plan(scores, value, epsilon=0.1, iterations=50)  # rescaled to total mass 4
    assert plan.sum().item() == pytest.approx(4.0)
    own = plan[[0, 1, 3], [0, 1, 3]]
    assert plan[:, 2].sum() < 0.01 * own.min()  # column 2 sent its mass to the bucket, not to a caption
    rows = plan[[0, 1, 3]]
    assert (own / rows.sum(1)).min() > 0.99  # the alignable captions keep their mass on their own clip
    # Without the bucket the uniform marginals force one unit into column 2.
    forced = 4 * sinkhorn_log(scores, 0.1, 50)
    assert forced[:, 2].sum().item() == pytest.approx(1.0, abs=1e-3)


def test_video_paragraph_loss_prefers_the_own_video():
    gen = torch.Generator().manual_seed(6)
    video = torch.randn(3, 4, 16, generator=gen)
    aligned = video_paragraph_loss(video_embedding=video, text_embedding=video + 0.1 * torch.randn(3, 4, 16, generator=gen))
    shuffled = video_paragraph_loss(video_embedding=video, text_embedding=torch.randn(3, 4, 16, generator=gen))
    assert aligned["loss"] < shuffled["loss"]
    assert 0 <= aligned["bucket_mass"] <= 1


def test_build_loss_norton_groups():
    cfg = LossConfig(name="norton")
    loss = build_loss(cfg)
    assert isinstance(loss, NortonLoss) and loss.beta == cfg.norton.beta == 0.3
    out = loss(video_embedding=torch.randn(2, 4, 8), text_embedding=torch.randn(2, 4, 3, 8))
    assert torch.isfinite(out["loss"]) and {"clip_loss", "paragraph_loss", "bucket_mass"} <= set(out)
    with pytest.raises(ValueError, match="norton: text"):
        loss(video_embedding=torch.randn(2, 4, 8), text_embedding=torch.randn(8, 8))


def test_token_level_paragraph_loss_is_token_similarity_fed_to_the_plan():
    """With frame and word tokens the paragraph term is video_paragraph_loss on token_similarity (captions x
    clips), restated here, and it differs from the clip-level cosine version."""
    gen = torch.Generator().manual_seed(3)
    v, c, k, f, w, d = 2, 3, 2, 4, 5, 8
    video, text = torch.randn(v, c, d, generator=gen), torch.randn(v, c, k, d, generator=gen)
    frames, words = torch.randn(v, c, f, d, generator=gen), torch.randn(v, c, k * w, d, generator=gen)
    mask = torch.rand(v, c, k * w, generator=gen) > 0.3
    loss = build_loss(LossConfig(name="norton"))
    assert loss.token_similarity  # the published setting is token-level
    out = loss(video_embedding=video, text_embedding=text, frame_embedding=frames, word_embedding=words, word_mask=mask)
    sim = token_similarity(frames.flatten(0, 1), words.flatten(0, 1), text_mask=mask.flatten(0, 1), alpha=0.1)
    expected = video_paragraph_loss(video_embedding=video, text_embedding=text.mean(dim=2), similarity=sim)["loss"]
    assert torch.allclose(out["paragraph_loss"], expected, atol=1e-6)
    clip_level = loss(video_embedding=video, text_embedding=text)
    assert not torch.allclose(out["paragraph_loss"], clip_level["paragraph_loss"])
    assert torch.allclose(out["clip_loss"], clip_level["clip_loss"])  # the clip term never uses tokens


def test_model_returns_frame_and_word_tokens_in_the_same_pass():
    from mmpt_lite.config import ModelConfig, TextTowerConfig, VideoTowerConfig
    from mmpt_lite.models.build import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(video=VideoTowerConfig(preset="vit_tiny_p8"),
                                    text=TextTowerConfig(word_dim=16, hidden_dim=32), embed_dim=24),
                        vocab=["shape", "moves", "left", "right"]).eval()
    text = model.tokenizer(["shape moves left", "right"])
    out = model(video=torch.randn(2, 3, 4, 32, 32), text=text, tokens=True)
    plain = model(video=torch.randn(2, 3, 4, 32, 32), text=text)
    assert out["frame_embedding"].shape == (2, 2, 24)  # 4 frames / tubelet 2
    assert torch.allclose(out["text_embedding"], plain["text_embedding"])
    tower, ids = model.text_tower, text["input_ids"]
    words = tower.fc2(torch.relu(tower.fc1(tower.word_embd(ids))))
    assert torch.allclose(out["text_token_embedding"], words)
    assert torch.equal(out["text_token_mask"], ids != 0) and out["text_token_mask"][1].sum() == 1


# --------------------------------------------------------------------------- config
def test_norton_config_ranges_and_conflicts(tmp_path):
    from mmpt_lite.config import ConfigConflict, ConfigError, load_config

    path = tmp_path / "run.yaml"
    path.write_text("loss: {name: norton}\ndata: {batch_size: 8, clips_per_video: 4, clip_order: consecutive}\n")
    cfg = load_config(path)
    assert (cfg.loss.norton.beta, cfg.loss.norton.clip_epsilon, cfg.loss.norton.paragraph_epsilon) == (0.3, 1.0, 0.1)
    assert (cfg.loss.norton.iterations, cfg.loss.norton.paragraph_weight, cfg.loss.norton.bucket_percentile) == (50, 0.1, 30)
    for key, value in (("beta", "1.5"), ("clip_epsilon", "0"), ("paragraph_epsilon", "-1"), ("iterations", "0"),
                       ("paragraph_weight", "-0.1"), ("bucket_percentile", "101"), ("paragraph_temperature", "0")):
        with pytest.raises(ConfigError, match=f"loss.norton.{key}: "):
            load_config(path, [f"loss.norton.{key}={value}"])
    with pytest.raises(ConfigConflict, match="data.clips_per_video: 1; NORTON's video-paragraph loss"):
        load_config(path, ["data.clips_per_video=1"])
    assert load_config(path, ["data.clips_per_video=1", "loss.norton.paragraph_weight=0"]).loss.name == "norton"
    with pytest.raises(ConfigError, match="data.clip_order"):
        load_config(path, ["data.clip_order=random"])


# --------------------------------------------------------------------------- data
def test_consecutive_clips_share_a_start_and_run_in_time_order():
    from test_loader import ArrayCaptionStore, ArrayVideoStore, tokenize

    from mmpt_lite.data.loader import MilNceClipDataset, TrainLoader

    dataset = MilNceClipDataset(ArrayVideoStore(6), ArrayCaptionStore(), tokenize, num_frames=4, fps=5.0,
                                video_size=8, num_candidates=1, min_time=0.5, clips_per_video=3,
                                clip_order="consecutive")
    loader = TrainLoader(dataset, batch_size=6, rank=0, world_size=1, seed=3)
    firsts = set()
    for _, batch in zip(range(6), loader, strict=False):
        videos = batch.video_index.view(2, 3)
        assert (videos == videos[:, :1]).all()
        anchors = (batch.text["input_ids"][:, 0, 1] - 1).view(2, 3)  # the single candidate = the anchor caption
        assert (anchors[:, 1:] - anchors[:, :-1] == 1).all(), anchors  # consecutive captions
        frame_of = batch.video[:, :, 0, 0, 1].view(2, 3, 4)[..., 0]  # each clip's first stored frame
        assert (frame_of[:, 1:] >= frame_of[:, :-1]).all()  # in time order
        firsts.update(anchors[:, 0].tolist())
    assert len(firsts) > 1  # the paragraph's start is random
    # Spread (the default) keeps its per-clip seeds: MIL-NCE batches are unchanged.
    spread = TrainLoader(MilNceClipDataset(ArrayVideoStore(6), ArrayCaptionStore(), tokenize, num_frames=4, fps=5.0,
                                           video_size=8, num_candidates=1, min_time=0.5, clips_per_video=3),
                         batch_size=6, rank=0, world_size=1, seed=3)
    assert spread.seed_group == 1 and loader.seed_group == 3


def test_contrastive_task_refuses_a_batch_that_splits_a_video():
    from mmpt_lite.data.batch import ClipBatch
    from mmpt_lite.train.tasks.contrastive import ContrastiveTask

    task = ContrastiveTask.__new__(ContrastiveTask)
    task.clips_per_video, task.loss_fn = 2, NortonLoss()
    batch = ClipBatch(torch.zeros(4, 1), torch.tensor([5, 5, 7, 7]))
    groups = task.groups(batch, torch.randn(4, 8), torch.randn(12, 8), 3)
    assert groups["video_embedding"].shape == (2, 2, 8) and groups["text_embedding"].shape == (2, 2, 3, 8)
    with pytest.raises(ValueError, match="not in runs of data.clips_per_video=2"):
        task.groups(ClipBatch(torch.zeros(4, 1), torch.tensor([5, 7, 7, 5])), torch.randn(4, 8), torch.randn(12, 8), 3)


# --------------------------------------------------------------------------- end to end
def test_tiny_norton_run_trains_with_finite_losses(tmp_path):
    import json

    from conftest import launch_tiny

    r = launch_tiny([f"data.root={tmp_path / 'how2-synth'}", f"train.output_dir={tmp_path / 'run'}", "loss.name=norton",
                     "data.clips_per_video=2", "data.clip_order=consecutive", "data.action_negatives.count=0",
                     "train.max_steps=4"])
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [row for row in rows if "paragraph_loss" in row]
    assert train and all(np.isfinite([row["loss"], row["clip_loss"], row["paragraph_loss"]]).all() for row in train)


def test_mined_batches_keep_each_videos_clips_together(tmp_path):
    """Retrieval-augmented batches (VideoCLIP, as NORTON trains) with 2 clips per video: videos are mined as
    units and expanded to their clips side by side."""
    from test_retrieval import IndexedDataset, TableModel, clustered, retri_config

    from mmpt_lite.data.loader import TrainLoader
    from mmpt_lite.retrieval.mining import RetrievalPlanProvider

    class TwoClips(IndexedDataset):  # sample s is part s % 2 of video s // 2 (what the model embeds)
        clips_per_video = 2

        def __getitem__(self, item):
            sample = super().__getitem__((item[0] // 2, item[1]))
            sample["video_index"] = torch.tensor(item[0] // 2)
            return sample

    dataset = TwoClips(80)
    provider = RetrievalPlanProvider(retri_config(tmp_path, start_epoch=0), TableModel(clustered(40, clusters=5)),
                                      dataset, torch.device("cpu"))
    plan = provider(0)
    assert plan.shape == (10, 1, 8) and sorted(plan.ravel()) == list(range(80))
    pairs = plan.reshape(-1, 2)
    assert (pairs[:, 0] % 2 == 0).all() and (pairs[:, 1] == pairs[:, 0] + 1).all()
    loader = TrainLoader(dataset, batch_size=8, rank=0, world_size=1, seed=7, plan_provider=provider)
    batch = next(iter(loader))
    index = batch.video_index.view(4, 2)
    assert (index[:, 0] == index[:, 1]).all()


# --------------------------------------------------------------------------- 2 gloo ranks
def _norton_rank_worker(rank, world_size, port, video, text, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        per_rank = video.shape[0] // world_size
        local = slice(rank * per_rank, (rank + 1) * per_rank)
        v, t = video[local].clone().requires_grad_(), text[local].clone().requires_grad_()
        loss = NortonLoss()(video_embedding=v, text_embedding=t)["loss"]
        loss.backward()
        torch.save({"loss": loss.detach(), "video_grad": v.grad, "text_grad": t.grad}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_norton_across_two_gloo_ranks_matches_full_batch(tmp_path):
    import torch.multiprocessing as mp
    from test_losses import free_port

    gen = torch.Generator().manual_seed(8)
    video = torch.randn(4, 3, 6, generator=gen, dtype=torch.float64)  # 4 videos x 3 clips
    text = torch.randn(4, 3, 2, 6, generator=gen, dtype=torch.float64)  # 2 candidates each
    v, t = video.clone().requires_grad_(), text.clone().requires_grad_()
    full = NortonLoss()(video_embedding=v, text_embedding=t)["loss"]
    full.backward()
    mp.spawn(_norton_rank_worker, args=(2, free_port(), video, text, str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert abs(got["loss"].item() - full.item()) < 1e-6  # whole videos gathered: the global loss everywhere
        local = slice(rank * 2, (rank + 1) * 2)
        torch.testing.assert_close(got["video_grad"], v.grad[local], atol=1e-6, rtol=0)
        torch.testing.assert_close(got["text_grad"], t.grad[local], atol=1e-6, rtol=0)
