"""Symmetric InfoNCE (CLIP / VideoCLIP style) with a fixed or learnable temperature.

Both embeddings are L2-normalised; logits = v·tᵀ / τ over the (all-gathered) batch; the loss is
the mean of the video->text and text->video cross-entropies with the matching pair as target.

Several candidate captions per clip (MIL-NCE batches, [B·K, D]) are reduced to one text per
video before the loss: the mean of the K raw embeddings (then normalised).

A learnable temperature is stored as ``log_inv_temperature`` = log(1/τ) and clamped so 1/τ <= 100,
as in CLIP.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mmpt_lite.distributed import all_gather_with_grad

MAX_INV_TEMPERATURE = 100.0


def register_temperature(module: nn.Module, temperature: float, learn_temperature: bool) -> None:
    """Give ``module`` a ``log_inv_temperature``: log(1 / ``loss.temperature``), a parameter when learned (CLIP's
    parametrisation), else a buffer (so it is still saved with the model)."""
    if temperature <= 0:
        raise ValueError(f"loss.temperature must be > 0, got {temperature}")
    log_inv = torch.tensor(math.log(1.0 / temperature))
    if learn_temperature:
        module.log_inv_temperature = nn.Parameter(log_inv)
    else:
        module.register_buffer("log_inv_temperature", log_inv)


class InfoNCELoss(nn.Module):
    def __init__(self, temperature: float = 0.07, learn_temperature: bool = False):
        super().__init__()
        register_temperature(self, temperature, learn_temperature)

    def forward(self, *, video_embedding: torch.Tensor, text_embedding: torch.Tensor,
                num_candidates: int = 1) -> dict[str, torch.Tensor]:
        """``video_embedding`` [B, D], ``text_embedding`` [B·K, D] -> {"loss", "temperature", "v2t_accuracy"}."""
        batch, dim = video_embedding.shape
        if text_embedding.shape[0] != batch * num_candidates:
            raise ValueError(f"infonce: {text_embedding.shape[0]} text rows for {batch} videos × "
                             f"{num_candidates} candidates")
        text = text_embedding.view(batch, num_candidates, dim).mean(dim=1)
        dtype = torch.promote_types(video_embedding.dtype, torch.float32)  # bf16/fp16 -> fp32; fp64 stays
        video = F.normalize(video_embedding.to(dtype), dim=-1)
        text = F.normalize(text.to(dtype), dim=-1)
        video = all_gather_with_grad(video)
        text = all_gather_with_grad(text)
        inv_temperature = self.log_inv_temperature.clamp(max=math.log(MAX_INV_TEMPERATURE)).exp()
        logits = inv_temperature * (video @ text.t())
        target = torch.arange(logits.shape[0], device=logits.device)
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
        return {
            "loss": loss,
            "temperature": (1.0 / inv_temperature).detach(),
            "v2t_accuracy": (logits.detach().argmax(dim=1) == target).float().mean(),
        }
