"""AFFNet: the adaptive frequency filter (AFF) token mixer in a hierarchical network.

*Adaptive Frequency Filters As Efficient Global Token Mixers* (Huang et al., ICCV 2023).
The token mixer is ``archbench.layers.freq_mixers.AdaptiveFrequencyFilter``: an
instance-adaptive complex mask on the rfft2 spectrum, equivalent to a global dynamic
depthwise convolution.

Deviation: the paper places AFF blocks in a MobileViT-style hybrid (MobileNetV2 blocks
plus AFF blocks). That macro-architecture and its widths were not available here, so
archbench puts the AFF mixer in the four-stage MetaFormer layout
(``archbench.models.metaformer.MetaFormer``) and registers only a CPU-scale variant;
no canonical parameter count is claimed.
"""

from __future__ import annotations

from typing import Any

from ._registry import ModelCard, build_model, register_model
from .metaformer import MetaFormer

_PAPER = "Adaptive Frequency Filters As Efficient Global Token Mixers"


@register_model(
    ModelCard(
        "affnet",
        _PAPER,
        2023,
        "metaformer",
        scale="cpu",
        img_size=32,
        notes="MetaFormer layout, 3x3/2 stem: 16, 8, 4, 2 grids at 32x32",
    )
)
def affnet_pico(**kwargs: Any) -> MetaFormer:
    defaults = dict(
        depths=(1, 1, 2, 1),
        dims=(32, 64, 128, 256),
        token_mixers="aff",
        norm="layernorm2d_nobias",
        head="mlp",
        stem_kernel=3,
        stem_stride=2,
        stem_padding=1,
        img_size=32,
    )
    return build_model(MetaFormer, defaults, kwargs)
