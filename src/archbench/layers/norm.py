"""Normalization layers and a factory. Spatial tensors are NCHW throughout archbench."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["GroupNorm1", "LayerNorm2d", "LayerNormNoBias", "create_norm", "NORM_LAYERS"]


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel dimension of an NCHW tensor (ConvNeXt's channels-first LN)."""

    def __init__(self, num_channels: int, eps: float = 1e-6, bias: bool = True) -> None:
        super().__init__(num_channels, eps=eps, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class LayerNormNoBias(nn.LayerNorm):
    """Channels-last LayerNorm with a scale but no bias (MetaFormer baselines)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__(num_channels, eps=eps, bias=False)


class GroupNorm1(nn.GroupNorm):
    """GroupNorm with one group: normalizes over (C, H, W) per sample (PoolFormer).

    ``bias=False`` keeps only the per-channel scale, as in the MetaFormer baselines'
    IdentityFormer / RandFormer / PoolFormerV2 (``groupnorm1_nobias``).
    """

    def __init__(
        self, num_channels: int, eps: float = 1e-5, affine: bool = True, bias: bool = True
    ) -> None:
        super().__init__(1, num_channels, eps=eps, affine=affine, bias=bias)


def _group_norm32(num_channels: int) -> nn.GroupNorm:
    groups = 32 if num_channels % 32 == 0 else 1
    return nn.GroupNorm(groups, num_channels)


NORM_LAYERS: dict[str, Callable[[int], nn.Module]] = {
    "batchnorm": nn.BatchNorm2d,
    "batchnorm1d": nn.BatchNorm1d,
    "layernorm": lambda c: nn.LayerNorm(c, eps=1e-6),
    "layernorm2d": LayerNorm2d,
    "layernorm2d_nobias": lambda c: LayerNorm2d(c, bias=False),
    "layernorm_nobias": LayerNormNoBias,
    "groupnorm": _group_norm32,
    "groupnorm1": GroupNorm1,
    "groupnorm1_nobias": lambda c: GroupNorm1(c, eps=1e-6, bias=False),
    "identity": lambda c: nn.Identity(),
}


def create_norm(name: str | Callable[[int], nn.Module], num_channels: int) -> nn.Module:
    """Build a norm layer from a name in ``NORM_LAYERS`` or a callable taking the width."""
    if callable(name):
        return name(num_channels)
    if name not in NORM_LAYERS:
        raise ValueError(f"unknown norm {name!r}; choose one of {sorted(NORM_LAYERS)}")
    return NORM_LAYERS[name](num_channels)
