"""MIL-NCE loss (Miech et al. 2020): several candidate captions per clip, raw dot products.

With V [B, D] video and T [B·K, D] text embeddings (rows i·K … i·K+K-1 are the K candidates
of video i), x = V·Tᵀ viewed as [B, B, K]. For video i:

* numerator   = logsumexp over k of x[i, i, k] (its own candidates, a "bag" of positives);
* denominator = logsumexp over the 2·B·K entries of x[i, :, :] and x[:, i, :] (every text
  against video i, and video i's candidates against every video; the positives appear in both
  halves, as in the reference implementation);
* loss = mean over i of (denominator − numerator). No temperature, no normalisation.

Optional hard negatives N [B, M, D] (M captions per video, e.g. its own candidates with the action
rewritten, :mod:`mmpt_lite.data.action_negatives`) join video i's denominator as the M extra terms
x = V[i]·N[i, m]; ``negative_mask`` [B, M] drops padding rows. They are seen by their own video only.

Under data parallelism both embeddings are all-gathered first with
:func:`mmpt_lite.distributed.all_gather_with_grad`: every rank computes the same global loss
and its backward reaches only its own slice, so the gradient w.r.t. a rank's local inputs equals
that slice of the single-process full-batch gradient. DDP then *averages* parameter gradients
over ranks, i.e. the update is the full-batch gradient divided by the world size -- the same as
the reference MIL-NCE training (all-gather keeping the local slice's gradient, then DDP).
"""

from __future__ import annotations

import torch
from torch import nn

from mmpt_lite.distributed import all_gather_with_grad


def milnce_loss(video_embedding: torch.Tensor, text_embedding: torch.Tensor, *, num_candidates: int,
                negative_embedding: torch.Tensor | None = None,
                negative_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """MIL-NCE on ``video_embedding`` [B, D] and ``text_embedding`` [B·K, D] (K = ``num_candidates``),
    with optional per-video hard negatives ``negative_embedding`` [B, M, D] (``negative_mask`` bool [B, M]).

    Returns ``loss`` (scalar, differentiable) and, detached for logging, ``log_numerator`` and
    ``log_denominator`` (their means over the global batch); with negatives also ``negative_win``,
    the share of valid negatives scoring below the video's best own candidate (with K distinct,
    interchangeable candidates a negative that carries no information wins K/(K+1) of the time, not
    half). At least float32.
    """
    video_embedding = all_gather_with_grad(video_embedding)
    text_embedding = all_gather_with_grad(text_embedding)
    if negative_embedding is not None:
        negative_embedding = all_gather_with_grad(negative_embedding)
        if negative_mask is not None:
            negative_mask = all_gather_with_grad(negative_mask.to(torch.uint8))  # gloo gathers no bool
    batch = video_embedding.shape[0]
    if text_embedding.shape[0] != batch * num_candidates:
        raise ValueError(f"milnce_loss: {text_embedding.shape[0]} text rows for {batch} videos × "
                         f"{num_candidates} candidates")
    dtype = torch.promote_types(video_embedding.dtype, torch.float32)  # bf16/fp16 -> fp32; fp64 stays
    scores = (video_embedding.to(dtype) @ text_embedding.to(dtype).t()).view(batch, batch, num_candidates)
    own = scores.diagonal(dim1=0, dim2=1).t()  # [B, K]: own[i, k] = scores[i, i, k]
    log_numerator = torch.logsumexp(own, dim=1)
    row_and_column = torch.cat((scores, scores.transpose(0, 1)), dim=1)  # [B, 2B, K]
    terms = row_and_column.reshape(batch, -1)
    extra = {}
    if negative_embedding is not None:
        if negative_embedding.shape[0] != batch:
            raise ValueError(f"milnce_loss: negatives for {negative_embedding.shape[0]} videos, expected {batch}")
        negative = torch.einsum("bd,bmd->bm", video_embedding.to(dtype), negative_embedding.to(dtype))
        valid = negative_mask.bool() if negative_mask is not None else torch.ones_like(negative, dtype=torch.bool)
        negative = negative.masked_fill(~valid, float("-inf"))
        terms = torch.cat((terms, negative), dim=1)
        wins = (negative.detach() < own.detach().max(dim=1, keepdim=True).values) & valid
        extra["negative_win"] = wins.sum() / valid.sum().clamp(min=1)
    log_denominator = torch.logsumexp(terms, dim=1)
    return {
        "loss": (log_denominator - log_numerator).mean(),
        "log_numerator": log_numerator.detach().mean(),
        "log_denominator": log_denominator.detach().mean(),
        **extra,
    }


class MILNCELoss(nn.Module):
    """Module form of :func:`milnce_loss` (no parameters), the shape ``build_loss`` returns."""

    def forward(self, *, video_embedding: torch.Tensor, text_embedding: torch.Tensor, num_candidates: int,
                negative_embedding: torch.Tensor | None = None,
                negative_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return milnce_loss(video_embedding, text_embedding, num_candidates=num_candidates,
                           negative_embedding=negative_embedding, negative_mask=negative_mask)
