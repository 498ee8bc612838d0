"""Stochastic depth and layer / residual scaling."""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["DropPath", "LayerScale", "LayerScale2d", "drop_path", "drop_path_rates"]


def drop_path(
    x: torch.Tensor, drop_prob: float, training: bool, scale_by_keep: bool = True
) -> torch.Tensor:
    """Drop whole residual branches per sample (Deep Networks with Stochastic Depth)."""
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    if scale_by_keep and keep > 0:
        mask = mask / keep
    return x * mask


class DropPath(nn.Module):
    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob}")
        self.drop_prob = drop_prob
        self.scale_by_keep = scale_by_keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training, self.scale_by_keep)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


def drop_path_rates(
    drop_path_rate: float, depths: list[int] | tuple[int, ...]
) -> list[list[float]]:
    """Linearly increasing stochastic-depth rates, split per stage."""
    total = sum(depths)
    # plain Python so that models can be built under ``torch.device("meta")``
    rates = (
        [drop_path_rate * i / (total - 1) for i in range(total)]
        if total > 1
        else [drop_path_rate] * total
    )
    out, start = [], 0
    for d in depths:
        out.append(rates[start : start + d])
        start += d
    return out


class LayerScale(nn.Module):
    """Per-channel learnable scale on the last dimension (CaiT)."""

    def __init__(self, dim: int, init_value: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(init_value * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class LayerScale2d(nn.Module):
    """Per-channel learnable scale for NCHW tensors."""

    def __init__(self, dim: int, init_value: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(init_value * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma.view(1, -1, 1, 1)
