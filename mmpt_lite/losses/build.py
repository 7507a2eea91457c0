"""``build_loss``: LossConfig -> a loss module called as ``loss(video_embedding=, text_embedding=,
num_candidates=)`` returning ``{"loss": scalar, ...logged terms}``.

A module rather than a function so a learnable temperature is a parameter the optimiser sees
(``loss_module.parameters()``) and that checkpoints save.
"""

from __future__ import annotations

from torch import nn

from mmpt_lite.config import LossConfig
from mmpt_lite.losses.infonce import InfoNCELoss
from mmpt_lite.losses.milnce import MILNCELoss


def build_loss(cfg: LossConfig) -> nn.Module:
    if cfg.name == "milnce":
        return MILNCELoss()
    if cfg.name == "infonce":
        return InfoNCELoss(temperature=cfg.temperature, learn_temperature=cfg.learn_temperature)
    raise ValueError(f"loss.name: unknown loss {cfg.name!r} (valid: milnce, infonce)")
