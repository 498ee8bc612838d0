"""Optimizers from a recipe, with weight decay only where it belongs.

Norm weights, biases and every other 0-d/1-d parameter get no weight decay, nor do the
names a model returns from ``no_weight_decay()`` (position embeddings, class tokens ...);
matches are exact names or name prefixes ending at a dot.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .recipe import Recipe

__all__ = ["build_optimizer", "param_groups", "set_lr"]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed (weights of convs/linears) and not decayed (the rest)."""
    skip = set()
    if hasattr(model, "no_weight_decay"):
        skip = set(model.no_weight_decay())
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        listed = name in skip or any(name.startswith(s + ".") for s in skip)
        (no_decay if p.ndim <= 1 or listed or name.endswith(".bias") else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module | list[dict], recipe: Recipe) -> torch.optim.Optimizer:
    """The recipe's optimizer over a model's :func:`param_groups`, or over given groups
    (a task's ``param_groups``: the model's plus its projectors and heads)."""
    groups = param_groups(model, recipe.weight_decay) if isinstance(model, nn.Module) else model
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(
            groups,
            lr=recipe.lr,
            momentum=recipe.momentum,
            nesterov=recipe.nesterov and recipe.momentum > 0,
        )
    return torch.optim.AdamW(groups, lr=recipe.lr, betas=recipe.betas, eps=recipe.eps)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr
