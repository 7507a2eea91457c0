"""Classification loss: cross-entropy against soft targets (label smoothing, mixup), computed in float32."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_target_cross_entropy(*, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum_c targets[b, c] · log softmax(logits)[b, c]; logits and targets [B, C].

    Logits are cast to float32 first: under bf16 autocast the log-softmax of a 400-way head loses digits.
    """
    return -(targets.float() * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1).mean()
