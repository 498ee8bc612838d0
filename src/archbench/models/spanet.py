"""SPANet: a MetaFormer with the spectral pooling aggregation modulation (SPAM) mixer.

*SPANet: Frequency-balancing Token Mixer using Spectral Pooling Aggregation Modulation*
(Yun et al., ICCV 2023). The token mixer is
``archbench.layers.freq_mixers.SpectralPoolingAggregationModulation``: low-pass spectral
pooling at several radii, aggregated with learned per-channel weights, modulating a
value branch. Blocks follow the MetaFormer layout (``archbench.models.metaformer``).

Deviation: the official stage layout and widths were not available here, so SPAM is
used in every stage and only a CPU-scale variant is registered (no canonical count).
"""

from __future__ import annotations

from typing import Any

from ._registry import ModelCard, build_model, register_model
from .metaformer import MetaFormer

_PAPER = "SPANet: Frequency-balancing Token Mixer using Spectral Pooling Aggregation Modulation"


@register_model(
    ModelCard(
        "spanet",
        _PAPER,
        2023,
        "metaformer",
        scale="cpu",
        img_size=32,
        notes="MetaFormer layout, 3x3/2 stem: 16, 8, 4, 2 grids at 32x32",
    )
)
def spanet_pico(**kwargs: Any) -> MetaFormer:
    defaults = dict(
        depths=(1, 1, 2, 1),
        dims=(32, 64, 128, 256),
        token_mixers="spam",
        norm="layernorm2d_nobias",
        head="mlp",
        stem_kernel=3,
        stem_stride=2,
        stem_padding=1,
        img_size=32,
    )
    return build_model(MetaFormer, defaults, kwargs)
