"""FFNet: MetaMixer blocks with FFNified attention (*MetaMixer Is All You Need*, Yun et
al., 2024).

FFNification keeps self-attention's query-key-value structure but swaps its
sub-operations for an FFN's: the input is the query, a large-kernel depthwise
convolution plays the keys (query-key interaction, with a channel expansion ``r``), GELU
replaces softmax, and a second depthwise convolution plays the values (coefficient-value
interaction, folding the ``r`` expanded channels back); a 1x1 convolution projects the
result. It works on the spatial dimension where an FFN works on channels, the mirror of
a ConvNeXt block. The channel mixer is the usual FFN, so an FFNet block is a MetaFormer
block (``archbench.layers.MetaFormerBlock``) with this token mixer, registered as
``"ffnified_attention"``.

Deviation: the official FFNet stage layout, kernel sizes per stage and re-parameterised
multi-kernel training branches were not available here; archbench uses the four-stage
MetaFormer layout with one kernel size and registers only a CPU-scale variant (no
canonical parameter count is claimed).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..layers import register_mixer
from ._registry import ModelCard, build_model, register_model
from .metaformer import MetaFormer

__all__ = ["FFNifiedAttention"]


@register_mixer("ffnified_attention")
class FFNifiedAttention(nn.Module):
    def __init__(self, dim: int, kernel_size: int = 7, expansion: int = 2) -> None:
        super().__init__()
        if kernel_size % 2 == 0 or expansion < 1:
            raise ValueError(
                f"kernel_size must be odd and expansion >= 1; got {kernel_size}, {expansion}"
            )
        pad = kernel_size // 2
        self.key = nn.Conv2d(dim, dim * expansion, kernel_size, padding=pad, groups=dim)
        self.act = nn.GELU()
        self.value = nn.Conv2d(dim * expansion, dim, kernel_size, padding=pad, groups=dim)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.value(self.act(self.key(x))))


@register_model(
    ModelCard(
        "ffnet",
        "MetaMixer Is All You Need",
        2024,
        "cnn",
        scale="cpu",
        img_size=32,
        notes="MetaFormer layout, 3x3/2 stem: 16, 8, 4, 2 grids; 5x5 kernels",
    )
)
def ffnet_pico(**kwargs: Any) -> MetaFormer:
    defaults = dict(
        depths=(1, 1, 2, 1),
        dims=(32, 64, 128, 256),
        token_mixers="ffnified_attention",
        norm="layernorm2d_nobias",
        head="mlp",
        stem_kernel=3,
        stem_stride=2,
        stem_padding=1,
        img_size=32,
    )
    return build_model(MetaFormer, defaults, kwargs)
