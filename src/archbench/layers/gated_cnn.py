"""The Gated CNN block of *MambaOut: Do We Really Need Mamba for Vision?* (Yu & Wang, 2024).

A Mamba block without the state-space model: LayerNorm -> one linear layer producing a
gate ``g`` and a value (``i`` kept as is, ``c`` passed through a depthwise kxk conv) ->
``fc2(act(g) * [i, c])`` -> residual. ``conv_ratio`` sets the share of value channels
that are convolved (1.0 in the paper). Takes and returns NCHW like every spatial block.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .act import create_act
from .drop import DropPath

__all__ = ["GatedCNNBlock"]


class GatedCNNBlock(nn.Module):
    def __init__(
        self,
        dim: int,
        expansion_ratio: float = 8 / 3,
        kernel_size: int = 7,
        conv_ratio: float = 1.0,
        act: str = "gelu",
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        hidden = int(expansion_ratio * dim)
        conv_channels = int(conv_ratio * dim)
        if not 0 < conv_channels <= hidden:
            raise ValueError(
                f"conv_ratio {conv_ratio} gives {conv_channels} conv channels; need 1..{hidden}"
            )
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, 2 * hidden)
        self.split = (hidden, hidden - conv_channels, conv_channels)
        self.act = create_act(act)
        self.conv = nn.Conv2d(
            conv_channels,
            conv_channels,
            kernel_size,
            padding=kernel_size // 2,
            groups=conv_channels,
        )
        self.fc2 = nn.Linear(hidden, dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        # the normalized input dies as soon as fc1 has read it: held until fc2 (one more
        # live activation), the block's peak moved the allocator's heap top, and glibc
        # returned and re-faulted ~100 MB per 224x224 batch-8 forward (docs/performance.md)
        x = self.fc1(self.norm(x.permute(0, 2, 3, 1)))  # NHWC
        gate, keep, conv = torch.split(x, self.split, dim=-1)
        conv = self.conv(conv.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = self.fc2(self.act(gate) * torch.cat((keep, conv), dim=-1))
        return shortcut + self.drop_path(x.permute(0, 3, 1, 2))
