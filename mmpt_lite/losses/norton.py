"""NORTON (Lin et al., ICLR 2024: noise-robust temporal optimal transport) on VideoCLIP-style batches.

Two terms, both in float32 (fp64 stays), over the all-gathered batch:

* **Clip-caption loss with faulty-negative exploitation.** Clips and captions are L2-normalised; the logits
  are S = v·tᵀ / τ (τ = ``loss.temperature``, as :class:`~mmpt_lite.losses.infonce.InfoNCELoss`). A transport
  plan Q = Sinkhorn(S, ε) with uniform marginals (1/N each) is computed without gradient; N·Q has rows (and
  columns) that are distributions. Targets: video->text β·N·Q + (1−β)·I, text->video β·(N·Q)ᵀ + (1−β)·I;
  the loss is the mean of the two soft cross-entropies, so β = 0 is exactly InfoNCE. Other clips' captions
  that Q matches to a clip (faulty negatives: the same step in another video, a neighbouring clip of the
  same video) get part of the target mass instead of being pushed away.
* **Video-paragraph loss** (weight ``loss.norton.paragraph_weight``): a batch of V videos × C consecutive
  clips in time order; video a's captions form paragraph a. For each (paragraph a, video b) the C×C
  clip-caption similarity block (cosine, or token-level log-sum-exp pooling when tokens are given) is
  extended by an *alignable prompt bucket*: one extra row and column whose value p is the given percentile
  (30) of the batch's aligned (diagonal) similarities. Sinkhorn (ε = 0.1) on the extended block lets a clip
  or caption whose best match is worse than p send its mass to the bucket instead of to a wrong partner.
  The plan (bucket removed, rescaled to total mass C, no gradient) weights the block: paragraph similarity
  = Σ plan·sim; logits = that / τ_p (0.07); symmetric cross-entropy over the V paragraphs.

Gradients reach the embeddings only through the similarities; every plan is computed under no_grad.
Sinkhorn is :func:`sinkhorn_log`, which takes *similarities* (a kernel exp(S/ε)); POT's ``ot.sinkhorn``
takes *costs* with kernel exp(−M/reg), so ``sinkhorn_log(S, ε) == ot.sinkhorn(a, b, M=-S, reg=ε)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mmpt_lite.distributed import all_gather_with_grad
from mmpt_lite.losses.infonce import MAX_INV_TEMPERATURE, register_temperature


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)  # bf16/fp16 -> fp32; fp64 stays


def sinkhorn_log(scores: torch.Tensor, epsilon: float, iterations: int, row_marginal: torch.Tensor | None = None,
                 col_marginal: torch.Tensor | None = None) -> torch.Tensor:
    """Entropic OT plan for *similarities* ``scores`` [..., M, N] (higher = better match), in the log domain.

    Maximises ⟨P, S⟩ + ε·H(P) subject to P·1 = a (``row_marginal`` [..., M] or [M], default uniform 1/M) and
    Pᵀ·1 = b (``col_marginal``, default 1/N): P = diag(u)·exp(S/ε)·diag(v). Each iteration updates v then u
    with logsumexp (POT's order, so after the last one the row marginals hold exactly and the column
    marginals to the convergence reached). ``a`` and ``b`` should carry the same total mass.

    Equals ``ot.sinkhorn(a, b, M=-scores, reg=epsilon, numItermax=iterations)`` (cost = −similarity,
    reg = ε). Returns P [..., M, N] in the computation dtype (float32 at least). Differentiable, but the
    NORTON losses call it under no_grad.
    """
    if epsilon <= 0 or iterations < 1:
        raise ValueError(f"sinkhorn_log: epsilon {epsilon} must be > 0 and iterations {iterations} >= 1")
    dtype = _compute_dtype(scores)
    m, n = scores.shape[-2:]
    log_kernel = scores.to(dtype) / epsilon
    lead = scores.shape[:-2]
    if row_marginal is None:
        log_a = torch.full((*lead, m), -math.log(m), dtype=dtype, device=scores.device)
    else:
        log_a = row_marginal.to(dtype).log().expand(*lead, m)
    if col_marginal is None:
        log_b = torch.full((*lead, n), -math.log(n), dtype=dtype, device=scores.device)
    else:
        log_b = col_marginal.to(dtype).log().expand(*lead, n)
    log_u = torch.zeros_like(log_a)  # any constant start: the first v update absorbs it
    log_v = torch.zeros_like(log_b)
    for _ in range(iterations):
        log_v = log_b - torch.logsumexp(log_kernel + log_u.unsqueeze(-1), dim=-2)
        log_u = log_a - torch.logsumexp(log_kernel + log_v.unsqueeze(-2), dim=-1)
    return (log_u.unsqueeze(-1) + log_kernel + log_v.unsqueeze(-2)).exp()


@torch.no_grad()
def faulty_negative_targets(scores: torch.Tensor, beta: float, epsilon: float,
                            iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft targets for square clip-caption logits ``scores`` [N, N] (row i: clip i, column j: caption j).

    Q = N · sinkhorn_log(scores, ε) with uniform marginals, so every row and column of Q sums to 1 (Q is
    doubly stochastic; NORTON scales the 1/N-marginal plan by N the same way). Returns (video->text
    targets β·Q + (1−β)·I, text->video targets β·Qᵀ + (1−β)·I), each [N, N] with rows that sum to 1.
    No gradient.
    """
    n = scores.shape[0]
    if scores.ndim != 2 or scores.shape[1] != n:
        raise ValueError(f"faulty_negative_targets: scores must be square [N, N], got {tuple(scores.shape)}")
    q = n * sinkhorn_log(scores.detach(), epsilon, iterations)
    eye = torch.eye(n, dtype=q.dtype, device=q.device)
    return beta * q + (1 - beta) * eye, beta * q.t() + (1 - beta) * eye


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of −Σ_j targets[i, j]·log softmax(logits[i])_j; ``logits``, ``targets`` [N, M]."""
    return -(targets * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


def norton_clip_loss(*, video_embedding: torch.Tensor, text_embedding: torch.Tensor, inv_temperature: torch.Tensor | float,
                     beta: float = 0.3, epsilon: float = 1.0, iterations: int = 50) -> dict[str, torch.Tensor]:
    """Clip-caption soft InfoNCE on ``video_embedding`` [N, D] and ``text_embedding`` [N, D] (row i of each
    is pair i; already gathered). Both are L2-normalised here; logits = inv_temperature·v·tᵀ, which is also
    what Sinkhorn sees (with ``epsilon``). Returns {"loss", "v2t_accuracy", "target_offdiag"} (the last: the
    mean target mass off the diagonal, i.e. how much the plan moved to other captions; at most β)."""
    dtype = _compute_dtype(video_embedding)
    video = F.normalize(video_embedding.to(dtype), dim=-1)
    text = F.normalize(text_embedding.to(dtype), dim=-1)
    logits = inv_temperature * (video @ text.t())
    v2t_targets, t2v_targets = faulty_negative_targets(logits, beta, epsilon, iterations)
    loss = 0.5 * (soft_cross_entropy(logits, v2t_targets) + soft_cross_entropy(logits.t(), t2v_targets))
    target = torch.arange(logits.shape[0], device=logits.device)
    return {"loss": loss,
            "v2t_accuracy": (logits.detach().argmax(dim=1) == target).float().mean(),
            "target_offdiag": (1 - v2t_targets.diagonal()).mean()}


def prompt_bucket_value(aligned: torch.Tensor, percentile: float = 30.0) -> torch.Tensor:
    """The alignable prompt bucket's value: the ``percentile`` (0-100, linear interpolation as
    ``numpy.percentile``) of the aligned similarities ``aligned`` (any shape). Detached scalar."""
    return torch.quantile(aligned.detach().flatten().to(_compute_dtype(aligned)), percentile / 100.0)


def add_prompt_bucket(scores: torch.Tensor, percentile: float = 30.0, *,
                      value: torch.Tensor | float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Append the bucket row and column to ``scores`` [..., M, N] -> ([..., M+1, N+1], value).

    The bucket entries (last row, last column, their corner) all hold ``value``; by default the ``percentile``
    of the diagonals of ``scores`` (over all leading dimensions: the aligned pairs). A clip whose every
    caption scores below the bucket sends its mass there in the plan."""
    if value is None:
        value = prompt_bucket_value(scores.diagonal(dim1=-2, dim2=-1), percentile)
    value = torch.as_tensor(value, dtype=scores.dtype, device=scores.device)
    *lead, m, n = scores.shape
    column = value.expand(*lead, m, 1)
    row = value.expand(*lead, 1, n + 1)
    return torch.cat((torch.cat((scores, column), dim=-1), row), dim=-2), value


@torch.no_grad()
def bucket_plan(scores: torch.Tensor, value: torch.Tensor | float, epsilon: float, iterations: int,
                rescale: bool = True) -> torch.Tensor:
    """OT plan of ``scores`` [..., M, N] with the prompt bucket, bucket removed -> [..., M, N]; no gradient.

    Marginals over the extended [M+1, N+1] problem (NORTON's): every real row and column 1, the bucket row N
    and the bucket column M (so the bucket can take all of the other side), all divided by M+N. With
    ``rescale`` each plan is scaled to total mass M (every (paragraph, video) pair moves the same mass, so
    none is favoured for sending less to the bucket); without, the real part is in units of M+N, i.e.
    ``plan.sum() * (M+N) / M`` is the share of the M rows' mass that stayed out of the bucket."""
    m, n = scores.shape[-2:]
    extended, _ = add_prompt_bucket(scores.detach(), value=value)
    dtype = extended.dtype if extended.dtype == torch.float64 else torch.float32
    rows = torch.ones(m + 1, dtype=dtype, device=scores.device)
    cols = torch.ones(n + 1, dtype=dtype, device=scores.device)
    rows[-1], cols[-1] = n, m
    plan = sinkhorn_log(extended, epsilon, iterations, rows / (m + n), cols / (m + n))[..., :m, :n]
    if not rescale:
        return plan
    return plan * (m / plan.sum(dim=(-2, -1), keepdim=True).clamp(min=1e-30))


def token_similarity(video_tokens: torch.Tensor, text_tokens: torch.Tensor, *, video_mask: torch.Tensor | None = None,
                     text_mask: torch.Tensor | None = None, alpha: float = 0.1) -> torch.Tensor:
    """Fine-grained clip-caption similarity [Nt, Nv] from normalised tokens: ``text_tokens`` [Nt, W, D] (mask
    [Nt, W]) and ``video_tokens`` [Nv, F, D] (mask [Nv, F]). Per word, α·logsumexp over frames of s/α (a soft
    max), averaged over words; likewise per frame over words; the two directions averaged."""
    dtype = _compute_dtype(video_tokens)
    text = F.normalize(text_tokens.to(dtype), dim=-1)
    video = F.normalize(video_tokens.to(dtype), dim=-1)
    tmask = torch.ones(text.shape[:2], dtype=torch.bool, device=text.device) if text_mask is None else text_mask.bool()
    vmask = torch.ones(video.shape[:2], dtype=torch.bool, device=video.device) if video_mask is None else video_mask.bool()
    sim = torch.einsum("awd,bfd->abwf", text, video) / alpha  # [Nt, Nv, W, F]
    neg = torch.finfo(dtype).min
    words = alpha * torch.logsumexp(sim.masked_fill(~vmask[None, :, None, :], neg), dim=-1)  # [Nt, Nv, W]
    t2v = (words * tmask[:, None]).sum(-1) / tmask.sum(-1, keepdim=True).clamp(min=1)
    frames = alpha * torch.logsumexp(sim.masked_fill(~tmask[:, None, :, None], neg), dim=-2)  # [Nt, Nv, F]
    v2t = (frames * vmask[None]).sum(-1) / vmask.sum(-1)[None].clamp(min=1)
    return 0.5 * (t2v + v2t)


def video_paragraph_loss(*, video_embedding: torch.Tensor, text_embedding: torch.Tensor, temperature: float = 0.07,
                         epsilon: float = 0.1, iterations: int = 50, percentile: float = 30.0,
                         similarity: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Video-paragraph contrastive loss over V videos × C consecutive clips.

    ``video_embedding`` [V, C, D] (clips in time order) and ``text_embedding`` [V, C, D] (clip c's caption).
    ``similarity`` [V·C, V·C] (caption rows, clip columns; e.g. :func:`token_similarity`) replaces the cosine
    of the embeddings when given. Block (a, b) [C, C] is paragraph a's captions against video b's clips; its
    bucket plan (value = ``percentile`` of the V·C aligned similarities) weights it into the paragraph
    similarity [V, V]; logits = that / ``temperature``; loss = mean of both cross-entropies.
    Returns {"loss", "bucket", "bucket_mass"} (mass the own-video plans sent to the bucket, share of C).
    """
    v, c, _ = video_embedding.shape
    if text_embedding.shape[:2] != (v, c):
        raise ValueError(f"video_paragraph_loss: text {tuple(text_embedding.shape)} for video {tuple(video_embedding.shape)}")
    if similarity is None:
        dtype = _compute_dtype(video_embedding)
        text = F.normalize(text_embedding.reshape(v * c, -1).to(dtype), dim=-1)
        video = F.normalize(video_embedding.reshape(v * c, -1).to(dtype), dim=-1)
        similarity = text @ video.t()
    blocks = similarity.view(v, c, v, c).transpose(1, 2)  # [V (paragraph), V (video), C, C]
    value = prompt_bucket_value(similarity.diagonal(), percentile)
    raw = bucket_plan(blocks, value, epsilon, iterations, rescale=False)  # no grad
    plan = raw * (c / raw.sum(dim=(-2, -1), keepdim=True).clamp(min=1e-30))
    logits = (plan * blocks).sum(dim=(-2, -1)) / temperature  # [V, V]
    target = torch.arange(v, device=logits.device)
    loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
    kept = raw.diagonal(dim1=0, dim2=1).sum(dim=(0, 1)) * 2  # own-video plans: share of the C rows' mass kept
    return {"loss": loss, "bucket": value, "bucket_mass": (1 - kept).mean()}


class NortonLoss(nn.Module):
    """``loss.name: norton``: clip loss + ``paragraph_weight`` × video-paragraph loss.

    Called with ``video_embedding`` [V, C, D] and ``text_embedding`` [V, C, K, D] (V videos × C consecutive
    clips, K candidate captions each, averaged to one caption as InfoNCE does); the contrastive task
    reshapes its batch so. A learnable temperature is ``log_inv_temperature`` as in InfoNCE.
    """

    grouped = True  # the task passes [V, C, ...] groups

    def __init__(self, *, temperature: float = 0.07, learn_temperature: bool = False, beta: float = 0.3,
                 clip_epsilon: float = 1.0, paragraph_epsilon: float = 0.1, iterations: int = 50,
                 paragraph_weight: float = 0.1, bucket_percentile: float = 30.0, paragraph_temperature: float = 0.07,
                 token_similarity: bool = False, token_alpha: float = 0.1):
        super().__init__()
        register_temperature(self, temperature, learn_temperature)
        # True: the task passes frame and word tokens, and the paragraph loss compares them (token_similarity)
        self.token_similarity, self.token_alpha = token_similarity, token_alpha
        self.beta, self.clip_epsilon, self.paragraph_epsilon = beta, clip_epsilon, paragraph_epsilon
        self.iterations, self.paragraph_weight = iterations, paragraph_weight
        self.bucket_percentile, self.paragraph_temperature = bucket_percentile, paragraph_temperature

    def forward(self, *, video_embedding: torch.Tensor, text_embedding: torch.Tensor,
                frame_embedding: torch.Tensor | None = None, word_embedding: torch.Tensor | None = None,
                word_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``video_embedding`` [V, C, D], ``text_embedding`` [V, C, K, D] -> {"loss", "clip_loss",
        "paragraph_loss", "temperature", "v2t_accuracy", ...}. With ``frame_embedding`` [V, C, F, D] and
        ``word_embedding`` [V, C, W, D] (``word_mask`` bool [V, C, W]; a clip's K candidates' words side by side)
        the paragraph loss compares clips and captions token by token (:func:`token_similarity`)."""
        v, c, d = video_embedding.shape
        if text_embedding.ndim != 4 or text_embedding.shape[:2] != (v, c):
            raise ValueError(f"norton: text {tuple(text_embedding.shape)} for video groups {(v, c, d)}")
        text = text_embedding.mean(dim=2)  # the K candidates -> one caption per clip
        dtype = _compute_dtype(video_embedding)
        # Gather whole videos (dim 0), so every rank sees the global batch's paragraphs intact.
        video = all_gather_with_grad(video_embedding.to(dtype))
        text = all_gather_with_grad(text.to(dtype))
        inv_temperature = self.log_inv_temperature.clamp(max=math.log(MAX_INV_TEMPERATURE)).exp()
        clip = norton_clip_loss(video_embedding=video.flatten(0, 1), text_embedding=text.flatten(0, 1),
                                inv_temperature=inv_temperature, beta=self.beta, epsilon=self.clip_epsilon,
                                iterations=self.iterations)
        out = {"clip_loss": clip["loss"].detach(), "temperature": (1.0 / inv_temperature).detach(),
               "v2t_accuracy": clip["v2t_accuracy"], "target_offdiag": clip["target_offdiag"]}
        loss = clip["loss"]
        if self.paragraph_weight > 0 and c > 1:
            similarity = None
            if frame_embedding is not None:
                frames = all_gather_with_grad(frame_embedding.to(dtype)).flatten(0, 1)  # [V·C, F, D]
                words = all_gather_with_grad(word_embedding.to(dtype)).flatten(0, 1)  # [V·C, W, D]
                mask = all_gather_with_grad(word_mask.to(dtype)).flatten(0, 1) > 0.5
                similarity = token_similarity(frames, words, text_mask=mask, alpha=self.token_alpha)
            paragraph = video_paragraph_loss(video_embedding=video, text_embedding=text,
                                             temperature=self.paragraph_temperature, epsilon=self.paragraph_epsilon,
                                             iterations=self.iterations, percentile=self.bucket_percentile,
                                             similarity=similarity)
            loss = loss + self.paragraph_weight * paragraph["loss"]
            out.update(paragraph_loss=paragraph["loss"].detach(), bucket=paragraph["bucket"],
                       bucket_mass=paragraph["bucket_mass"])
        return {"loss": loss, **out}
