"""Optimizer with decay/no-decay parameter groups and a per-step warmup + cosine schedule."""

from __future__ import annotations

import math

import torch

from mmpt_lite.config import OptimConfig


def param_groups(modules: list[torch.nn.Module], weight_decay: float) -> list[dict]:
    """Weight decay on matrices/kernels only: biases, norms and other 1-D parameters are exempt
    (the VideoMAE/AdamW convention). Frozen parameters are left out."""
    decay, no_decay = [], []
    for module in modules:
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(cfg: OptimConfig, modules: list[torch.nn.Module], *, fused: bool = False) -> torch.optim.Optimizer:
    groups = param_groups(modules, cfg.weight_decay)
    betas = tuple(cfg.betas)
    if len(betas) != 2:
        raise ValueError(f"optim.betas: expected two values, got {cfg.betas}")
    kwargs = {"lr": cfg.lr, "betas": betas}
    if fused:
        kwargs["fused"] = True
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, **kwargs)
    if cfg.name == "adam":
        # Adam's weight decay is L2 on the gradient (as torch.optim.Adam); 0 in the MIL-NCE recipe.
        return torch.optim.Adam(groups, **kwargs)
    raise ValueError(f"optim.name: {cfg.name!r} is not one of 'adam', 'adamw'")


def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int, base_lr: float, min_lr: float) -> float:
    """Learning rate at ``step`` (0-based): linear warmup from ~0, then cosine from base_lr to min_lr."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if total_steps <= warmup_steps:
        return base_lr
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int):
    """A LambdaLR stepped once per optimizer step."""
    def factor(step: int) -> float:
        lr = warmup_cosine(step, warmup_steps=cfg.warmup_steps, total_steps=total_steps,
                           base_lr=cfg.lr, min_lr=cfg.min_lr)
        return lr / cfg.lr if cfg.lr > 0 else 0.0
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
