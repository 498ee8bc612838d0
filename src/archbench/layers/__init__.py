"""Building blocks. No layer knows about any model.

Tensor layout: spatial blocks, token mixers and plug-in attention modules take and
return NCHW tensors (B, C, H, W). Transformer-style blocks take token tensors (B, N, C).
A module that prefers channels-last internally permutes inside its own forward.

Factories (``create_norm``, ``create_act``, ``create_attn``, ``create_mixer``) build a
layer from a short name so that model tables stay declarative; ``register_attn`` and
``register_mixer`` add new names from any module.
"""

from .act import ACT_LAYERS, SquaredReLU, StarReLU, create_act
from .attention import Attention, TransformerBlock, reference_attention
from .channel_attn import (
    ATTN_LAYERS,
    EfficientChannelAttn,
    SqueezeExcite,
    create_attn,
    register_attn,
)
from .drop import DropPath, LayerScale, LayerScale2d, drop_path, drop_path_rates
from .helpers import make_divisible, to_2tuple
from .metaformer import MetaFormerBlock
from .mixers import (
    MIXERS,
    AttentionMixer,
    IdentityMixer,
    PoolingMixer,
    RandomMixer,
    SepConvMixer,
    create_mixer,
    register_mixer,
)
from .mlp import ConvMlp, Mlp, MlpHead
from .norm import NORM_LAYERS, GroupNorm1, LayerNorm2d, LayerNormNoBias, create_norm
from .patch_embed import PatchEmbed
from .pos_embed import resample_pos_embed

__all__ = [
    "ACT_LAYERS",
    "ATTN_LAYERS",
    "MIXERS",
    "NORM_LAYERS",
    "Attention",
    "AttentionMixer",
    "ConvMlp",
    "DropPath",
    "EfficientChannelAttn",
    "GroupNorm1",
    "IdentityMixer",
    "LayerNorm2d",
    "LayerNormNoBias",
    "LayerScale",
    "LayerScale2d",
    "MetaFormerBlock",
    "Mlp",
    "MlpHead",
    "PatchEmbed",
    "PoolingMixer",
    "RandomMixer",
    "SepConvMixer",
    "SquaredReLU",
    "SqueezeExcite",
    "StarReLU",
    "TransformerBlock",
    "create_act",
    "create_attn",
    "create_mixer",
    "create_norm",
    "drop_path",
    "drop_path_rates",
    "make_divisible",
    "reference_attention",
    "register_attn",
    "resample_pos_embed",
    "register_mixer",
    "to_2tuple",
]

# Import every other module in this package so that plug-ins registered with
# ``register_attn`` / ``register_mixer`` in their own files are available by name.
import importlib as _importlib
import pkgutil as _pkgutil

for _m in sorted(m.name for m in _pkgutil.iter_modules(__path__)):
    if not _m.startswith("_"):
        _importlib.import_module(f"{__name__}.{_m}")
