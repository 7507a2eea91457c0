"""``build_loss``: LossConfig -> a loss module called as ``loss(video_embedding=, text_embedding=,
num_candidates=)`` returning ``{"loss": scalar, ...logged terms}``; a module with ``grouped = True`` (NORTON)
is called instead with ``video_embedding`` [V, C, D] and ``text_embedding`` [V, C, K, D] (the contrastive task).

A module rather than a function so a learnable temperature is a parameter the optimiser sees
(``loss_module.parameters()``) and that checkpoints save.
"""

from __future__ import annotations

from torch import nn

from mmpt_lite.config import LossConfig
from mmpt_lite.losses.infonce import InfoNCELoss
from mmpt_lite.losses.milnce import MILNCELoss
from mmpt_lite.losses.norton import NortonLoss


def build_loss(cfg: LossConfig) -> nn.Module:
    if cfg.name == "milnce":
        return MILNCELoss()
    if cfg.name == "infonce":
        return InfoNCELoss(temperature=cfg.temperature, learn_temperature=cfg.learn_temperature)
    if cfg.name == "norton":
        n = cfg.norton
        return NortonLoss(temperature=cfg.temperature, learn_temperature=cfg.learn_temperature, beta=n.beta,
                          clip_epsilon=n.clip_epsilon, paragraph_epsilon=n.paragraph_epsilon, iterations=n.iterations,
                          paragraph_weight=n.paragraph_weight, bucket_percentile=n.bucket_percentile,
                          paragraph_temperature=n.paragraph_temperature,
                          token_similarity=n.paragraph_similarity == "tokens", token_alpha=n.token_alpha)
    raise ValueError(f"loss.name: unknown loss {cfg.name!r} (valid: milnce, infonce, norton)")
