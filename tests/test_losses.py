"""MIL-NCE against a literal implementation of its definition (single process and 2 gloo ranks), InfoNCE."""

import math
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from mmpt_lite.config import LossConfig
from mmpt_lite.losses.build import build_loss
from mmpt_lite.losses.infonce import InfoNCELoss
from mmpt_lite.losses.milnce import MILNCELoss, milnce_loss


def logsumexp(values):
    top = max(v.item() for v in values)
    return top + torch.log(sum(torch.exp(v - top) for v in values))


def brute_force_milnce(video, text, num_candidates):
    """Section 4 written out: explicit lists of the K positives and of the 2·B·K denominator entries."""
    batch = video.shape[0]

    def score(i, j, k):  # video i against candidate k of video j
        return video[i] @ text[j * num_candidates + k]

    terms = []
    for i in range(batch):
        positives = [score(i, i, k) for k in range(num_candidates)]
        row = [score(i, j, k) for j in range(batch) for k in range(num_candidates)]  # x[i, :, :]
        column = [score(j, i, k) for j in range(batch) for k in range(num_candidates)]  # x[:, i, :]
        assert len(row + column) == 2 * batch * num_candidates
        terms.append(logsumexp(row + column) - logsumexp(positives))
    return sum(terms) / batch


def random_embeddings(batch, num_candidates, dim, seed=0):
    gen = torch.Generator().manual_seed(seed)
    video = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    text = torch.randn(batch * num_candidates, dim, generator=gen, dtype=torch.float64)
    return video, text


@pytest.mark.parametrize("batch,num_candidates,dim", [(1, 1, 3), (4, 1, 8), (5, 3, 7), (6, 4, 16)])
def test_milnce_matches_brute_force_loss_and_gradients(batch, num_candidates, dim):
    video, text = random_embeddings(batch, num_candidates, dim, seed=batch)
    v1, t1 = video.clone().requires_grad_(), text.clone().requires_grad_()
    out = milnce_loss(v1, t1, num_candidates=num_candidates)
    out["loss"].backward()
    v2, t2 = video.clone().requires_grad_(), text.clone().requires_grad_()
    expected = brute_force_milnce(v2, t2, num_candidates)
    expected.backward()
    assert abs(out["loss"].item() - expected.item()) < 1e-6
    torch.testing.assert_close(v1.grad, v2.grad, atol=1e-6, rtol=0)
    torch.testing.assert_close(t1.grad, t2.grad, atol=1e-6, rtol=0)
    assert set(out) == {"loss", "log_numerator", "log_denominator"}


def test_milnce_float32_inputs_and_module_form():
    video, text = random_embeddings(3, 2, 5)
    module_out = build_loss(LossConfig(name="milnce"))(video_embedding=video.float(), text_embedding=text.float(),
                                                       num_candidates=2)
    assert isinstance(build_loss(LossConfig(name="milnce")), MILNCELoss)
    assert module_out["loss"].dtype == torch.float32
    assert abs(module_out["loss"].item() - brute_force_milnce(video, text, 2).item()) < 1e-5


def test_milnce_rejects_wrong_number_of_text_rows():
    with pytest.raises(ValueError, match="text rows"):
        milnce_loss(torch.randn(3, 4), torch.randn(7, 4), num_candidates=2)


# --------------------------------------------------------------------------- 2 gloo ranks
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_worker(rank, world_size, port, video, text, num_candidates, out_dir, negatives=None, mask=None):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        per_rank = video.shape[0] // world_size
        local = slice(rank * per_rank, (rank + 1) * per_rank)
        local_video = video[local].clone().requires_grad_()
        rows = per_rank * num_candidates
        local_text = text[rank * rows:(rank + 1) * rows].clone().requires_grad_()
        extra, local_negatives = {}, None
        if negatives is not None:
            local_negatives = negatives[local].clone().requires_grad_()
            extra = {"negative_embedding": local_negatives, "negative_mask": mask[local]}
        loss = milnce_loss(local_video, local_text, num_candidates=num_candidates, **extra)["loss"]
        loss.backward()
        torch.save({"loss": loss.detach(), "video_grad": local_video.grad, "text_grad": local_text.grad,
                    "negative_grad": local_negatives.grad if local_negatives is not None else torch.zeros(0)},
                   f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("with_negatives", [False, True])
def test_milnce_across_two_gloo_ranks_matches_full_batch(tmp_path, with_negatives):
    batch, num_candidates, world_size = 4, 3, 2
    video, text = random_embeddings(batch, num_candidates, 6, seed=11)
    negatives = mask = None
    extra = {}
    v, t = video.clone().requires_grad_(), text.clone().requires_grad_()
    if with_negatives:
        negatives = torch.randn(batch, 2, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        mask = torch.tensor([[True, True], [True, False], [False, False], [False, True]])
        n = negatives.clone().requires_grad_()
        extra = {"negative_embedding": n, "negative_mask": mask}
    full = milnce_loss(v, t, num_candidates=num_candidates, **extra)["loss"]
    full.backward()

    mp.spawn(_rank_worker, args=(world_size, free_port(), video, text, num_candidates, str(tmp_path), negatives, mask),
             nprocs=world_size, join=True)
    per_rank = batch // world_size
    for rank in range(world_size):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert abs(got["loss"].item() - full.item()) < 1e-6  # every rank sees the global loss
        # The gradient w.r.t. a rank's own inputs is its slice of the full-batch gradient.
        local = slice(rank * per_rank, (rank + 1) * per_rank)
        torch.testing.assert_close(got["video_grad"], v.grad[local], atol=1e-6, rtol=0)
        rows = per_rank * num_candidates
        torch.testing.assert_close(got["text_grad"], t.grad[rank * rows:(rank + 1) * rows], atol=1e-6, rtol=0)
        if with_negatives:
            torch.testing.assert_close(got["negative_grad"], n.grad[local], atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- hard negatives
def brute_force_milnce_with_negatives(video, text, num_candidates, negatives, mask):
    """As brute_force_milnce, video i's denominator also holding v_i·n_im for its valid negatives m."""
    batch, terms = video.shape[0], []
    for i in range(batch):
        positives = [video[i] @ text[i * num_candidates + k] for k in range(num_candidates)]
        row = [video[i] @ text[j * num_candidates + k] for j in range(batch) for k in range(num_candidates)]
        column = [video[j] @ text[i * num_candidates + k] for j in range(batch) for k in range(num_candidates)]
        own_negatives = [video[i] @ negatives[i, m] for m in range(negatives.shape[1]) if mask[i, m]]
        terms.append(logsumexp(row + column + own_negatives) - logsumexp(positives))
    return sum(terms) / batch


def test_milnce_hard_negatives_match_brute_force_and_padding_is_ignored():
    batch, num_candidates, dim, m = 5, 3, 7, 4
    video, text = random_embeddings(batch, num_candidates, dim, seed=4)
    negatives = torch.randn(batch, m, dim, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    mask = torch.rand(batch, m, generator=torch.Generator().manual_seed(2)) < 0.6
    mask[0] = False  # a video without negatives
    v1, t1, n1 = (x.clone().requires_grad_() for x in (video, text, negatives))
    out = milnce_loss(v1, t1, num_candidates=num_candidates, negative_embedding=n1, negative_mask=mask)
    out["loss"].backward()
    v2, t2, n2 = (x.clone().requires_grad_() for x in (video, text, negatives))
    expected = brute_force_milnce_with_negatives(v2, t2, num_candidates, n2, mask)
    expected.backward()
    assert abs(out["loss"].item() - expected.item()) < 1e-6
    for got, want in ((v1, v2), (t1, t2), (n1, n2)):
        torch.testing.assert_close(got.grad, want.grad, atol=1e-6, rtol=0)
    assert (n1.grad[~mask] == 0).all(), "padding rows get no gradient"
    # Negatives raise the loss; with every row padding it is plain MIL-NCE.
    plain = milnce_loss(video, text, num_candidates=num_candidates)["loss"]
    assert out["loss"].item() > plain.item()
    all_padding = milnce_loss(video, text, num_candidates=num_candidates, negative_embedding=negatives,
                              negative_mask=torch.zeros(batch, m, dtype=torch.bool))
    assert abs(all_padding["loss"].item() - plain.item()) < 1e-12


def test_milnce_negative_win_counts_valid_negatives_below_the_best_positive():
    video = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # one candidate each: own scores 2 and 3
    negatives = torch.tensor([[[1.0, 0.0], [5.0, 0.0]], [[0.0, 1.0], [0.0, 9.0]]])  # scores 1, 5 | 1, 9
    mask = torch.tensor([[True, True], [True, False]])
    out = milnce_loss(video, text, num_candidates=1, negative_embedding=negatives, negative_mask=mask)
    assert out["negative_win"].item() == pytest.approx(2 / 3)  # 1 < 2, 5 > 2, 1 < 3; the 9 is padding


# --------------------------------------------------------------------------- InfoNCE
def reference_infonce(video, text, temperature):
    v, t = F.normalize(video, dim=-1), F.normalize(text, dim=-1)
    logits = v @ t.t() / temperature
    target = torch.arange(len(v))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def test_infonce_fixed_temperature_and_candidate_reduction():
    video, text = random_embeddings(4, 3, 8)
    grouped = text.view(4, 3, 8)
    mean_loss = InfoNCELoss(temperature=0.1)(video_embedding=video, text_embedding=text, num_candidates=3)
    assert abs(mean_loss["loss"].item() - reference_infonce(video, grouped.mean(1), 0.1).item()) < 1e-6
    assert abs(mean_loss["temperature"].item() - 0.1) < 1e-6
    assert 0.0 <= mean_loss["v2t_accuracy"].item() <= 1.0
    assert list(InfoNCELoss().parameters()) == []  # fixed temperature: nothing to optimise


def test_infonce_learnable_temperature_is_a_parameter_with_gradient():
    loss_module = build_loss(LossConfig(name="infonce", temperature=0.07, learn_temperature=True))
    (param,) = list(loss_module.parameters())
    assert abs(param.item() - math.log(1 / 0.07)) < 1e-6
    video, text = random_embeddings(4, 1, 8)
    loss_module(video_embedding=video.float(), text_embedding=text.float(), num_candidates=1)["loss"].backward()
    assert param.grad is not None and torch.isfinite(param.grad)
