"""Activations and a factory."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["StarReLU", "SquaredReLU", "create_act", "ACT_LAYERS"]


class StarReLU(nn.Module):
    """s * relu(x)^2 + b with learnable scalars s and b (MetaFormer Baselines for Vision)."""

    def __init__(
        self, scale: float = 0.8944, bias: float = -0.4472, learnable: bool = True
    ) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale), requires_grad=learnable)
        self.bias = nn.Parameter(torch.tensor(bias), requires_grad=learnable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.relu(x).square() + self.bias


class SquaredReLU(nn.Module):
    """relu(x)^2 (Primer), used in MetaFormer's MLP head."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x).square()


ACT_LAYERS: dict[str, Callable[[], nn.Module]] = {
    "relu": partial(nn.ReLU, inplace=False),
    "relu6": nn.ReLU6,
    "gelu": nn.GELU,
    "gelu_tanh": partial(nn.GELU, approximate="tanh"),
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "hardswish": nn.Hardswish,
    "sigmoid": nn.Sigmoid,
    "hardsigmoid": nn.Hardsigmoid,
    "tanh": nn.Tanh,
    "mish": nn.Mish,
    "leaky_relu": partial(nn.LeakyReLU, 0.1),
    "star_relu": StarReLU,
    "squared_relu": SquaredReLU,
    "identity": nn.Identity,
}


def create_act(name: str | Callable[[], nn.Module] | None, inplace: bool = False) -> nn.Module:
    """Build an activation from a name in ``ACT_LAYERS`` or a zero-argument callable.

    ``inplace=True`` makes a named activation that has an in-place form (ReLU, leaky ReLU,
    SiLU, hard-swish, ...) overwrite its input instead of allocating its output. Callers
    pass it only where the input is a temporary nothing else reads: a norm's output inside
    ``ConvNormAct``, a residual sum. A callable is built as given.
    """
    if name is None:
        return nn.Identity()
    if callable(name):
        return name()
    if name not in ACT_LAYERS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACT_LAYERS)}")
    act = ACT_LAYERS[name]()
    if inplace and hasattr(act, "inplace"):
        act.inplace = True
    return act
