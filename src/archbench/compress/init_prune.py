"""PreCropping: structured channel pruning at initialization, following the layer densities
a pruning-at-initialization (PAI) method finds.

*Structured Pruning is All You Need for Pruning CNNs at Initialization* (Cai et al.,
2022). The paper's observation: what decides the accuracy of a CNN pruned at
initialization is each layer's density (the fraction of its weights kept), not which
individual weights are kept. PreCropping therefore runs a PAI scoring once to obtain the
layer-wise densities, then shrinks every layer at the channel level to that density
before training: the model is dense and regular, smaller and faster for training and
inference alike.

Steps:

1. PAI scores: SynFlow (Tanaka et al., 2020; data-free: absolute weights, an all-ones
   input, ``R = sum(f(1))``, score ``|w * dR/dw|``, pruned over ``rounds`` iterations
   with the exponential schedule ``density ** (k / rounds)``) or SNIP (Lee et al., 2019;
   ``|w * dL/dw|`` on a labelled batch). One global threshold over every conv and linear
   weight gives each layer's density ``d_l``.
2. Cropping: a layer's weight count scales with its input and output widths, both of
   which shrink when neighbours shrink, so each layer keeps ``sqrt(d_l)`` of its output
   channels (the product of two neighbours' ratios then tracks ``d_l``). The channels go
   through Torch-Pruning's dependency graph (``structured.prune_structured`` with per-layer
   ratios), which keeps residual and grouped couplings consistent; the classifier keeps
   its outputs. Which channels go is immaterial at initialization (the paper's point);
   the lowest-magnitude ones are removed.

Deviation: the square-root split of a layer's density between its input and output
channels is archbench's rule for turning densities into widths in any graph (the paper
derives widths per architecture); ``info`` reports the densities, the channel ratios and
the parameter count reached.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._common import check_fraction, count_params
from .registry import CompressContext, CompressResult, register_compressor

__all__ = ["layer_densities", "precrop_ratios", "snip_scores", "synflow_scores"]


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m.weight[0].numel() > 1
    ]


def synflow_scores(
    model: nn.Module, input_shape: tuple[int, ...], density: float, rounds: int = 10
) -> dict[str, torch.Tensor]:
    """SynFlow scores of every conv/linear weight after ``rounds`` of iterative pruning
    (pruned weights score 0). The model is not changed."""
    net = copy.deepcopy(model).double().eval()
    layers = _layers(net)
    with torch.no_grad():
        for p in net.state_dict().values():
            if p.is_floating_point():
                p.abs_()
        # normalization layers pass the flow through unscaled: a zero-initialized residual
        # gamma would otherwise cut every residual branch out of the synaptic flow
        for m in net.modules():
            if isinstance(m, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)):
                if getattr(m, "weight", None) is not None:
                    m.weight.fill_(1.0)
                if getattr(m, "bias", None) is not None:
                    m.bias.zero_()
                if getattr(m, "running_var", None) is not None:
                    m.running_var.fill_(1.0)
                    m.running_mean.zero_()
    masks = {n: torch.ones_like(m.weight, dtype=torch.bool) for n, m in layers}
    originals = {n: m.weight.detach().clone() for n, m in layers}
    x = torch.ones(1, *input_shape, dtype=torch.float64)
    scores: dict[str, torch.Tensor] = {}
    for k in range(1, rounds + 1):
        net.zero_grad()
        with torch.no_grad():
            for n, m in layers:
                m.weight.copy_(originals[n] * masks[n])
        net(x).sum().backward()
        scores = {n: (m.weight.grad * m.weight).detach().abs() * masks[n] for n, m in layers}
        keep = density ** (k / rounds)
        thr = _global_threshold(scores, keep)
        masks = {n: s > thr for n, s in scores.items()}
    return {n: s.float() for n, s in scores.items()}


def snip_scores(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor
) -> dict[str, torch.Tensor]:
    """SNIP scores ``|w * dL/dw|`` of every conv/linear weight on one labelled batch."""
    net = copy.deepcopy(model).train()
    layers = _layers(net)
    net.zero_grad()
    F.cross_entropy(net(images), labels).backward()
    return {n: (m.weight.grad * m.weight).detach().abs() for n, m in layers}


def _global_threshold(scores: dict[str, torch.Tensor], keep: float) -> float:
    flat = torch.cat([s.flatten() for s in scores.values()])
    n_keep = max(1, int(round(keep * flat.numel())))
    if n_keep >= flat.numel():
        return -math.inf
    return float(flat.sort(descending=True).values[n_keep])


def layer_densities(scores: dict[str, torch.Tensor], density: float) -> dict[str, float]:
    """Each layer's kept fraction under one global threshold keeping ``density`` of all."""
    thr = _global_threshold(scores, density)
    return {n: float((s > thr).float().mean()) for n, s in scores.items()}


def precrop_ratios(
    densities: dict[str, float], skip: set[str] = frozenset(), max_ratio: float = 0.95
) -> dict[str, float]:
    """Fraction of output channels to remove per layer: ``1 - sqrt(d_l)`` (capped)."""
    return {
        n: min(max_ratio, 1.0 - math.sqrt(d))
        for n, d in densities.items()
        if n not in skip and 1.0 - math.sqrt(d) > 0
    }


def _check_args(density: Any = 0.3, pai: str = "synflow", rounds: int = 10, **_: Any) -> None:
    check_fraction("density", density)
    if pai not in ("synflow", "snip"):
        raise ValueError(f"pai must be 'synflow' or 'snip', got {pai!r}")
    if int(rounds) < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")


@register_compressor("precrop", check=_check_args)
def precrop(
    model: nn.Module,
    ctx: CompressContext,
    density: float = 0.3,
    pai: str = "synflow",
    rounds: int = 10,
    ignore: str = "",
) -> CompressResult:
    """PreCropping at initialization to ``density`` of the weights; train it afterwards."""
    from .structured import _classifier_layers, prune_structured

    _check_args(density, pai, rounds)
    if pai == "synflow":
        scores = synflow_scores(model, ctx.input_shape, density, rounds)
    else:
        if ctx.batches is None:
            raise ValueError("pai='snip' needs labelled data; pass --data (or use pai=synflow)")
        images, labels = next(iter(ctx.batches()))
        scores = snip_scores(model, images.to(ctx.device), labels.to(ctx.device))
    densities = layer_densities(scores, density)
    heads = {id(m) for m in _classifier_layers(model)}
    skip = {n for n, m in _layers(model) if id(m) in heads}
    ratios = precrop_ratios(densities, skip)
    before = count_params(model)
    pruned, info = prune_structured(
        model,
        ctx.example_input(1),
        0.0,
        importance="magnitude",
        ignore=ignore or None,
        layer_ratios=ratios,
    )
    info.update(
        pai=pai,
        target_density=float(density),
        layer_density={n: round(d, 4) for n, d in densities.items()},
        channel_removed={n: round(r, 4) for n, r in ratios.items()},
        params_ratio=count_params(pruned) / before,
    )
    return CompressResult(pruned, needs_finetune=True, info=info)
