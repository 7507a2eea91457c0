"""Optimizer with decay/no-decay parameter groups and a per-step warmup + cosine schedule."""

from __future__ import annotations

import math

import torch

from mmpt_lite.config import OptimConfig


def layer_lr_scale(module: torch.nn.Module, name: str, layer_decay: float) -> float:
    """BEiT/VideoMAE layer-wise lr decay: ``layer_decay ** (L - 1 - layer)`` for a module that numbers its
    parameters (``num_lr_layers`` L, ``lr_layer(name)``): the head trains at the full lr, each layer below at
    ``layer_decay`` times the one above. 1.0 when decay is off."""
    if layer_decay == 1.0:
        return 1.0
    num_layers = getattr(module, "num_lr_layers", None)
    if num_layers is None:
        raise ValueError(f"optim.layer_decay: {layer_decay} needs a model with a layer order (a ViT classifier), "
                         f"not {type(module).__name__}; use 1.0")
    return layer_decay ** (num_layers - 1 - module.lr_layer(name))


def param_groups(modules: list[torch.nn.Module], weight_decay: float, layer_decay: float = 1.0) -> list[dict]:
    """Weight decay on matrices/kernels only: biases, norms and other 1-D parameters are exempt
    (the VideoMAE/AdamW convention; SlowFast's no decay on BatchNorm). Frozen parameters are left out.
    With ``layer_decay`` < 1 each group also has an ``lr_scale`` (:func:`layer_lr_scale`)."""
    groups: dict[tuple[bool, float], list] = {}
    for module in modules:
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            decays = not (p.ndim <= 1 or name.endswith(".bias"))
            groups.setdefault((decays, layer_lr_scale(module, name, layer_decay)), []).append(p)
    if not groups:  # the optimizer needs one group even with nothing to train
        groups[(True, 1.0)] = []
    return [{"params": params, "weight_decay": weight_decay if decays else 0.0, "lr_scale": scale}
            for (decays, scale), params in sorted(groups.items(), key=lambda item: (-item[0][1], not item[0][0]))]


def build_optimizer(cfg: OptimConfig, modules: list[torch.nn.Module], *, fused: bool = False) -> torch.optim.Optimizer:
    groups = param_groups(modules, cfg.weight_decay, cfg.layer_decay)
    for group in groups:  # the schedule scales each group's own lr (LambdaLR keeps it as the group's base)
        group["lr"] = cfg.lr * group["lr_scale"]
    kwargs = {"lr": cfg.lr}
    if fused:
        kwargs["fused"] = True
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0, **kwargs)
    betas = tuple(cfg.betas)
    if len(betas) != 2:
        raise ValueError(f"optim.betas: expected two values, got {cfg.betas}")
    kwargs["betas"] = betas
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, **kwargs)
    if cfg.name == "adam":
        # Adam's weight decay is L2 on the gradient (as torch.optim.Adam); 0 in the MIL-NCE recipe.
        return torch.optim.Adam(groups, **kwargs)
    raise ValueError(f"optim.name: {cfg.name!r} is not one of 'adam', 'adamw', 'sgd'")


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
