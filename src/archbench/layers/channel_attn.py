"""Channel / spatial attention modules that plug into convolutional blocks.

Contract: ``Module(channels, **kwargs)`` maps an NCHW tensor to one of the same shape.
Modules register under a short name so that a block takes them through one argument,
for example ``create_model("resnet50", attn_layer="eca")``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn

from .act import create_act
from .helpers import make_divisible

__all__ = [
    "ATTN_LAYERS",
    "EfficientChannelAttn",
    "SqueezeExcite",
    "create_attn",
    "register_attn",
]

ATTN_LAYERS: dict[str, Callable[..., nn.Module]] = {}


def register_attn(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        if name in ATTN_LAYERS:
            raise ValueError(f"attention layer {name!r} is registered twice")
        ATTN_LAYERS[name] = cls
        return cls

    return decorator


def create_attn(name: str | Callable[..., nn.Module] | None, channels: int, **kwargs) -> nn.Module:
    """Build a plug-in attention module by name (see ``ATTN_LAYERS``) or from a callable."""
    if name is None or name == "":
        return nn.Identity()
    if callable(name):
        return name(channels, **kwargs)
    if name not in ATTN_LAYERS:
        raise ValueError(f"unknown attention layer {name!r}; choose one of {sorted(ATTN_LAYERS)}")
    return ATTN_LAYERS[name](channels, **kwargs)


@register_attn("se")
class SqueezeExcite(nn.Module):
    """Squeeze-and-Excitation: global pool, bottleneck MLP, sigmoid gate per channel."""

    def __init__(
        self,
        channels: int,
        rd_ratio: float = 1 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        act: str = "relu",
        gate: str = "sigmoid",
    ) -> None:
        super().__init__()
        rd = rd_channels or make_divisible(channels * rd_ratio, rd_divisor, min_value=1)
        self.fc1 = nn.Conv2d(channels, rd, 1)
        self.act = create_act(act, inplace=True)  # on fc1's output, read by nothing else
        self.fc2 = nn.Conv2d(rd, channels, 1)
        self.gate = create_act(gate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.fc2(self.act(self.fc1(s))))


@register_attn("eca")
class EfficientChannelAttn(nn.Module):
    """ECA-Net: a 1-D convolution across pooled channels, kernel size adapted to the width."""

    def __init__(
        self, channels: int, kernel_size: int | None = None, gamma: int = 2, beta: int = 1
    ) -> None:
        super().__init__()
        if kernel_size is None:
            t = int(abs((math.log2(channels) + beta) / gamma))
            kernel_size = t if t % 2 else t + 1
        if kernel_size % 2 == 0:
            raise ValueError(f"ECA kernel_size must be odd, got {kernel_size}")
        self.kernel_size = kernel_size
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3)).unsqueeze(1)  # B x 1 x C
        w = torch.sigmoid(self.conv(s)).transpose(1, 2).unsqueeze(-1)  # B x C x 1 x 1
        return x * w
