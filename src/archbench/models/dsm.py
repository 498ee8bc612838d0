"""Dynamic Spectrum Mixer (DSM) networks.

*Dynamic Spectrum Mixer for Visual Recognition* (Hu et al., 2023). The token mixer is
``archbench.layers.freq_mixers.DynamicSpectrumMixer``: a 2D DCT, per-channel spectrum
weights mixed from learned bases by coefficients predicted from the pooled input, and
the inverse DCT. Blocks follow the MetaFormer layout
(``archbench.models.metaformer.MetaFormer``).

Deviation: the paper's exact stage widths, depths and extra channel-mixing details were
not available here, so only a CPU-scale variant is registered and no canonical parameter
count is claimed. The spectrum bases are sized for the build resolution and resampled
bilinearly for other input sizes.
"""

from __future__ import annotations

from typing import Any

from ._registry import ModelCard, build_model, register_model
from .metaformer import MetaFormer

_PAPER = "Dynamic Spectrum Mixer for Visual Recognition"


@register_model(
    ModelCard(
        "dsm",
        _PAPER,
        2023,
        "mlp",
        scale="cpu",
        img_size=32,
        notes="MetaFormer layout, 3x3/2 stem: 16, 8, 4, 2 grids at 32x32",
    )
)
def dsm_pico(**kwargs: Any) -> MetaFormer:
    defaults = dict(
        depths=(1, 1, 2, 1),
        dims=(32, 64, 128, 256),
        token_mixers="dsm",
        norm="layernorm2d_nobias",
        head="mlp",
        stem_kernel=3,
        stem_stride=2,
        stem_padding=1,
        img_size=32,
    )
    return build_model(MetaFormer, defaults, kwargs)
