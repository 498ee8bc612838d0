"""Layer-adaptive magnitude pruning by rate-distortion optimization.

*Efficient Joint Optimization of Layer-Adaptive Weight Pruning in Deep Neural Networks*
(Xu et al., ICCV 2023; official release Akimoto-Cris/RD_VIT_PRUNE). Within a layer the
smallest-magnitude weights go first; how many each layer loses is chosen jointly. The
paper's key observation is that the output distortion of pruning several layers is
close to the sum of the distortions of pruning each alone, so with ``d_l(s)``, the mean
squared change of the network's output when only layer ``l`` is pruned to sparsity ``s``,
the allocation solves

    minimize  sum_l d_l(s_l)   subject to   sum_l s_l * n_l >= target * sum_l n_l

over a grid of sparsities per layer, by dynamic programming over the layers (state: the
number of weights pruned so far, counted in ``budget_units`` steps), linear in the number
of layers. ``d_l`` is measured on calibration images; the chosen weights are zeroed (an
unstructured sparsity: the model keeps its shapes; ``info`` gives each layer's sparsity).
Deviation: the official code also searches a Lagrangian slope per layer; the exact DP
over a grid is the same problem solved directly, which the small models here afford.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from ._common import check_fraction, snapshot_batches
from .registry import CompressContext, CompressResult, register_compressor

__all__ = [
    "allocate_sparsity",
    "apply_magnitude_sparsity",
    "distortion_curves",
    "magnitude_mask",
    "prunable_layers",
]


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every convolution and linear layer with at least 2 weights per output (named)."""
    return [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)) and m.weight[0].numel() > 1
    ]


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep mask removing the ``round(sparsity * numel)`` smallest-magnitude weights."""
    k = int(round(sparsity * weight.numel()))
    mask = torch.ones_like(weight, dtype=torch.bool)
    if k > 0:
        idx = weight.detach().abs().flatten().argsort()[:k]
        mask.view(-1)[idx] = False
    return mask


@torch.no_grad()
def distortion_curves(
    model: nn.Module,
    images: list[torch.Tensor],
    grid: list[float],
    layers: list[tuple[str, nn.Module]] | None = None,
) -> torch.Tensor:
    """(layers, len(grid)): mean squared output change when only that layer is pruned."""
    layers = prunable_layers(model) if layers is None else layers
    model.eval()
    ref = [model(x) for x in images]
    out = torch.zeros(len(layers), len(grid))
    for li, (_, layer) in enumerate(layers):
        original = layer.weight.detach().clone()
        for gi, s in enumerate(grid):
            if s == 0:
                continue
            layer.weight.mul_(magnitude_mask(original, s))
            err = sum(((model(x) - r) ** 2).mean() for x, r in zip(images, ref, strict=True))
            out[li, gi] = float(err) / len(images)
            layer.weight.copy_(original)
    return out


def allocate_sparsity(
    distortion: torch.Tensor,
    sizes: list[int],
    grid: list[float],
    target: float,
    budget_units: int = 1000,
) -> list[int]:
    """Grid index per layer minimizing the summed distortion with at least ``target`` of all
    weights pruned (dynamic programming over layers)."""
    n_layers, n_grid = distortion.shape
    total = sum(sizes)
    unit = total / budget_units
    need = math.ceil(target * total / unit - 1e-9)
    cost = [
        [int(math.floor(grid[g] * sizes[li] / unit)) for g in range(n_grid)]
        for li in range(n_layers)
    ]
    cap = min(need, budget_units)
    inf = math.inf
    best = [0.0] + [inf] * cap  # best[u]: least distortion with min(u, cap) units pruned
    choice: list[list[int]] = []
    for li in range(n_layers):
        new = [inf] * (cap + 1)
        arg = [-1] * (cap + 1)
        for u in range(cap + 1):
            if best[u] == inf:
                continue
            for g in range(n_grid):
                v = min(cap, u + cost[li][g])
                d = best[u] + float(distortion[li, g])
                if d < new[v]:
                    new[v], arg[v] = d, g * (cap + 1) + u
        choice.append(arg)
        best = new
    if best[cap] == inf:
        raise ValueError(
            f"sparsity {target} cannot be reached with the grid's largest sparsity {max(grid)}"
        )
    picks, u = [0] * n_layers, cap
    for li in range(n_layers - 1, -1, -1):
        g, u = divmod(choice[li][u], cap + 1)
        picks[li] = g
    return picks


@torch.no_grad()
def apply_magnitude_sparsity(layers: list[tuple[str, nn.Module]], sparsities: list[float]) -> None:
    for (_, layer), s in zip(layers, sparsities, strict=True):
        layer.weight.mul_(magnitude_mask(layer.weight, s))


def _check_args(
    sparsity: Any = 0.7, grid_steps: Any = 20, max_layer_sparsity: Any = 0.98, **_: Any
) -> None:
    sparsity = check_fraction("sparsity", sparsity)
    top = check_fraction("max_layer_sparsity", max_layer_sparsity, high_open=False)
    if int(grid_steps) < 2:
        raise ValueError(f"grid_steps must be >= 2, got {grid_steps}")
    if sparsity > top:
        raise ValueError("sparsity cannot exceed max_layer_sparsity; raise max_layer_sparsity")


@register_compressor("rd_prune", check=_check_args)
def rd_prune(
    model: nn.Module,
    ctx: CompressContext,
    sparsity: float = 0.7,
    grid_steps: int = 20,
    max_layer_sparsity: float = 0.98,
    calibration_images: int = 64,
    budget_units: int = 1000,
) -> CompressResult:
    """Zero ``sparsity`` of the conv/linear weights, per-layer amounts by RD optimization."""
    sparsity = check_fraction("sparsity", sparsity)
    max_layer_sparsity = check_fraction("max_layer_sparsity", max_layer_sparsity, high_open=False)
    if int(grid_steps) < 2:
        raise ValueError(f"grid_steps must be >= 2, got {grid_steps}")
    if sparsity > max_layer_sparsity:
        raise ValueError("sparsity cannot exceed max_layer_sparsity; raise max_layer_sparsity")
    batches = snapshot_batches(ctx, max(1, math.ceil(calibration_images / 16)))
    images = torch.cat(batches)[: int(calibration_images)]
    images_list = list(images.split(32))
    layers = prunable_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no convolution or linear layer to prune")
    grid = [max_layer_sparsity * i / (grid_steps - 1) for i in range(grid_steps)]
    curves = distortion_curves(model, images_list, grid, layers)
    sizes = [m.weight.numel() for _, m in layers]
    picks = allocate_sparsity(curves, sizes, grid, sparsity, budget_units)
    chosen = [grid[g] for g in picks]
    apply_magnitude_sparsity(layers, chosen)
    zeros = sum(int((m.weight == 0).sum()) for _, m in layers)
    info: dict[str, Any] = {
        "target_sparsity": sparsity,
        "sparsity": zeros / sum(sizes),
        "layer_sparsity": {n: round(s, 4) for (n, _), s in zip(layers, chosen, strict=True)},
        "predicted_distortion": float(sum(curves[i, g] for i, g in enumerate(picks))),
    }
    return CompressResult(model, needs_finetune=True, keep_zeros=True, info=info)
