"""Optimizers from a recipe, with weight decay only where it belongs.

Norm weights, biases and every other 0-d/1-d parameter get no weight decay, nor do the
names a model returns from ``no_weight_decay()`` (position embeddings, class tokens ...);
matches are exact names or name prefixes ending at a dot.

Layer-wise learning-rate decay (BEiT, Bao et al., 2022; timm's
``param_groups_layer_decay``): with ``layer_decay`` < 1 each parameter group carries an
``lr_scale`` of ``layer_decay ** (num_layers - layer_id)``, where the stem is layer 0,
the blocks count up from 1 and the final norm and head are the last layer (scale 1).
:func:`layer_ids` finds the blocks from the model's ``feature_info``: every listed
module, or each child of a listed ``nn.Sequential`` stage. Parameters outside them count
with the stem when they come before the first block in registration order and with the
head otherwise (timm's per-family ``group_matcher`` tables place, for example,
ConvNeXt's between-stage downsampling with the stage it feeds; archbench registers those
layers before its stages, so they decay like the stem).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .recipe import Recipe

__all__ = ["build_optimizer", "layer_ids", "param_groups", "set_lr"]


def _blocks(model: nn.Module) -> list[str]:
    """Module paths of the model's blocks, input to output, from its ``feature_info``."""
    paths: list[str] = []
    modules = dict(model.named_modules())
    for info in getattr(model, "feature_info", None) or []:
        path = getattr(info, "module", None)
        module = modules.get(path) if path else None
        if module is None:
            continue
        children = list(module.named_children()) if isinstance(module, nn.Sequential) else []
        paths += [f"{path}.{c}" for c, _ in children] if len(children) > 1 else [path]
    return paths


def layer_ids(model: nn.Module) -> tuple[dict[str, int], int]:
    """Each parameter's layer id (stem 0, blocks 1..B, head B + 1) and the number of layers.

    Returns ``(ids, num_layers)`` with ``num_layers = B + 2``, so the head's scale
    ``decay ** (num_layers - 1 - id)`` is 1, as in BEiT's fine-tuning code.
    """
    blocks = _blocks(model)
    ids: dict[str, int] = {}
    seen_block = False
    for name, _ in model.named_parameters():
        layer = next(
            (i + 1 for i, b in enumerate(blocks) if name.startswith(b + ".") or name == b), None
        )
        if layer is not None:
            seen_block = True
        else:
            layer = len(blocks) + 1 if seen_block else 0
        ids[name] = layer
    return ids, len(blocks) + 2


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float = 1.0) -> list[dict]:
    """Decayed (weights of convs/linears) and not decayed (the rest) parameters.

    With ``layer_decay`` < 1, one such pair per layer, each with its ``lr_scale``.
    """
    if not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
    skip = set()
    if hasattr(model, "no_weight_decay"):
        skip = set(model.no_weight_decay())
    ids, num_layers = layer_ids(model) if layer_decay < 1.0 else ({}, 1)
    buckets: dict[tuple[int, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        listed = name in skip or any(name.startswith(s + ".") for s in skip)
        no_wd = p.ndim <= 1 or listed or name.endswith(".bias")
        buckets.setdefault((ids.get(name, 0), no_wd), []).append(p)
    if layer_decay == 1.0:
        groups = [{"params": buckets.get((0, False), []), "weight_decay": weight_decay}]
        if buckets.get((0, True)):
            groups.append({"params": buckets[(0, True)], "weight_decay": 0.0})
        return groups
    return [
        {
            "params": params,
            "weight_decay": 0.0 if no_wd else weight_decay,
            "lr_scale": layer_decay ** (num_layers - 1 - layer),
        }
        for (layer, no_wd), params in sorted(buckets.items())
    ]


def build_optimizer(model: nn.Module | list[dict], recipe: Recipe) -> torch.optim.Optimizer:
    """The recipe's optimizer over a model's :func:`param_groups`, or over given groups
    (a task's ``param_groups``: the model's plus its projectors and heads)."""
    if isinstance(model, nn.Module):
        groups = param_groups(model, recipe.weight_decay, recipe.layer_decay)
    else:
        groups = model
    for g in groups:
        if "lr_scale" in g:
            g["lr"] = recipe.lr * g["lr_scale"]
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
        g["lr"] = lr * g.get("lr_scale", 1.0)
