"""MetaFormer baselines (*MetaFormer Baselines for Vision*, Yu et al., 2022/2024).

One model, four stages of ``archbench.layers.MetaFormerBlock`` (norm -> token mixer ->
residual, norm -> StarReLU MLP -> residual), with the token mixer of each stage given by
name from ``archbench.layers.MIXERS``. The family is then a table:

- IdentityFormer: ``identity`` in every stage;
- RandFormer: ``identity`` in stages 1-2, a frozen random token-mixing matrix in 3-4;
- PoolFormerV2: ``pooling`` in every stage;
- ConvFormer: ``sepconv`` (inverted separable 7x7 depthwise conv) in every stage;
- CAFormer: ``sepconv`` in stages 1-2 and global ``attention`` in stages 3-4.

As in the paper: the stem is a 7x7/4 convolution (padding 2) followed by a bias-free
LayerNorm; each later downsampling is a bias-free LayerNorm followed by a 3x3/2
convolution; the MLPs have no biases and use StarReLU; res-scale (a learnable
per-channel scale of the shortcut, initialised to 1) is used in the last two stages,
layer scale nowhere. IdentityFormer, RandFormer and PoolFormerV2 normalise each block
over (C, H, W) with a per-channel scale and no bias (``groupnorm1_nobias``); ConvFormer
and CAFormer use a bias-free LayerNorm over channels (``layernorm2d_nobias``). Features
are averaged over space and normalised by a LayerNorm; the head is linear for the basic
baselines and an MLP (x4, SquaredReLU, LayerNorm) for ConvFormer and CAFormer.

LayerNorm epsilons follow the official release (``metaformer_baselines.py``): 1e-6 in the
stem, downsampling, block norms and the output norm before the head, and PyTorch's
default 1e-5 inside the MLP head (its ``MlpHead`` takes a plain ``nn.LayerNorm``). timm's
port uses 1e-6 in the MLP head too; the paper does not give the value.

RandFormer's random matrices depend on the token count, so a RandFormer is tied to the
``img_size`` it was built for. They are kept as frozen ``nn.Parameter`` s
(``requires_grad=False``), as in the official release, so they travel with the weights;
they therefore count in the total parameter count but not the trainable one, which is
exactly the paper's "11.9 + 0.2M" notation (learnable + frozen). The RandFormer cards
give the total and note the split.

CPU variants for 32x32 keep the block, the mixers and the stage layout but use a 3x3/2
stem (padding 1), so the four stages see 16, 8, 4 and 2 pixel grids.

Deviation from the official code: StarReLU starts at s=0.8944, b=-0.4472 (the values
the paper derives for a unit-Gaussian input) where the official code initialises s=1,
b=0; both are learnable, and parameter counts are unaffected.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from ..layers import MIXERS, LayerNorm2d, MetaFormerBlock, MlpHead, drop_path_rates
from ..layers.helpers import init_trunc_normal, to_2tuple
from ._base import FeatureInfo, ImageClassifier, min_side_for_convs
from ._registry import ModelCard, build_model, register_model

__all__ = ["MetaFormer", "MlpHead"]


def _per_stage(value: Any, n: int, name: str) -> list[Any]:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} needs one entry per stage ({n}), got {len(value)}: {value}")
        return list(value)
    return [value] * n


class MetaFormer(ImageClassifier):
    """Four-stage MetaFormer: conv stem, [downsample -> MetaFormer blocks] x 4, LN, head."""

    width_args = ("dims",)
    depth_args = ("depths",)

    def __init__(
        self,
        depths: tuple[int, ...] = (2, 2, 6, 2),
        dims: tuple[int, ...] = (64, 128, 320, 512),
        token_mixers: str | Sequence[str] = "identity",
        norm: str = "groupnorm1_nobias",
        mlp_ratio: float = 4.0,
        res_scale_init: float | None | Sequence[float | None] = (None, None, 1.0, 1.0),
        layer_scale_init: float | None = None,
        head: str = "linear",
        head_mlp_ratio: float = 4.0,
        stem_kernel: int = 7,
        stem_stride: int = 4,
        stem_padding: int = 2,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int | tuple[int, int] = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        n = len(depths)
        if n == 0 or len(dims) != n:
            raise ValueError(f"depths {depths} and dims {dims} must be non-empty and equally long")
        mixers = _per_stage(token_mixers, n, "token_mixers")
        for m in mixers:
            if m not in MIXERS:
                raise ValueError(f"unknown token mixer {m!r}; choose one of {sorted(MIXERS)}")
        res_scales = _per_stage(res_scale_init, n, "res_scale_init")
        if head not in ("linear", "mlp"):
            raise ValueError(f"head must be 'linear' or 'mlp', got {head!r}")
        size = to_2tuple(img_size)
        if min(size) <= 0:
            raise ValueError(f"img_size must be positive, got {img_size}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.token_mixers = tuple(mixers)
        self.head_type = head
        self.head_mlp_ratio = head_mlp_ratio
        self.drop_rate = drop_rate
        if "random" in mixers:  # its matrices are sized for one token grid
            self.fixed_input_size = size
        # padded convolutions: any size the stem's kernel fits in works
        self.min_input_size = min_side_for_convs([(stem_kernel, stem_stride, stem_padding)])

        # stem: conv then LN; later downsampling: LN then conv (the paper's layout)
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, dims[0], stem_kernel, stem_stride, stem_padding),
            LayerNorm2d(dims[0], bias=False),
        )
        grid = tuple((s + 2 * stem_padding - stem_kernel) // stem_stride + 1 for s in size)
        if min(grid) < 1:
            raise ValueError(
                f"img_size {img_size} is too small for the {stem_kernel}x{stem_kernel} stem "
                f"(nearest valid: {self.min_input_size})"
            )
        dprs = drop_path_rates(drop_path_rate, depths)
        self.downsample = nn.ModuleList()
        self.stages = nn.ModuleList()
        self.feature_info = []
        reduction = stem_stride
        for i in range(n):
            if i == 0:
                self.downsample.append(nn.Identity())
            else:
                self.downsample.append(
                    nn.Sequential(
                        LayerNorm2d(dims[i - 1], bias=False),
                        nn.Conv2d(dims[i - 1], dims[i], 3, 2, 1),
                    )
                )
                grid = tuple((g - 1) // 2 + 1 for g in grid)
                reduction *= 2
            blocks = [
                MetaFormerBlock(
                    dims[i],
                    token_mixer=mixers[i],
                    input_size=grid,
                    mlp_ratio=mlp_ratio,
                    norm=norm,
                    drop_path=dprs[i][j],
                    layer_scale_init=layer_scale_init,
                    res_scale_init=res_scales[i],
                )
                for j in range(depths[i])
            ]
            self.stages.append(nn.Sequential(*blocks))
            self.feature_info.append(FeatureInfo(dims[i], reduction, f"stages.{i}"))
        self.num_features = dims[-1]
        self.cam_target = f"stages.{n - 1}"
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate if head == "linear" else 0.0)
        self.head = self._make_head(num_classes)
        self._init_weights()

    def _make_head(self, num_classes: int) -> nn.Module:
        if num_classes == 0:
            return nn.Identity()
        if self.head_type == "mlp":
            return MlpHead(
                self.num_features,
                num_classes,
                self.head_mlp_ratio,
                self.drop_rate,
                act="squared_relu",
                norm_eps=1e-5,
            )
        return nn.Linear(self.num_features, num_classes)

    def _init_weights(self) -> None:
        self.apply(init_trunc_normal)

    def reset_classifier(self, num_classes: int) -> None:
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        self.num_classes = num_classes
        self.head = self._make_head(num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.stem(x)
        for down, stage in zip(self.downsample, self.stages):
            x = stage(down(x))
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.norm(x.mean((2, 3))))
        return x if pre_logits else self.head(x)


def _metaformer(defaults: dict[str, Any], kwargs: dict[str, Any]) -> MetaFormer:
    return build_model(MetaFormer, defaults, kwargs)


_PAPER = "MetaFormer Baselines for Vision"
_S12 = dict(depths=(2, 2, 6, 2), dims=(64, 128, 320, 512))
_S18 = dict(depths=(3, 3, 9, 3), dims=(64, 128, 320, 512))
_BASIC = dict(norm="groupnorm1_nobias", head="linear")
_RICH = dict(norm="layernorm2d_nobias", head="mlp")
_IDENTITY = ("identity",) * 4
_RANDOM = ("identity", "identity", "random", "random")
_POOL = ("pooling",) * 4
_CONV = ("sepconv",) * 4
_CA = ("sepconv", "sepconv", "attention", "attention")
_SRC = "paper and official sail-sg/metaformer README (ImageNet-1k, 224px)"
_RAND_NOTE = (
    "params_m is learnable + frozen: the paper writes {learn} + {frozen}M (random mixing "
    "matrices, frozen after random initialisation); archbench counts the frozen matrices as "
    "non-trainable parameters, so the trainable count is the paper's first figure"
)


def _card(scale: str = "canonical", **fields: Any) -> ModelCard:
    return ModelCard("metaformer", _PAPER, 2022, "metaformer", scale=scale, **fields)


@register_model(_card(params_m=11.9, gmacs=1.8, top1=74.6, source=_SRC))
def identityformer_s12(**kwargs: Any) -> MetaFormer:
    return _metaformer(dict(_S12, token_mixers=_IDENTITY, **_BASIC), kwargs)


@register_model(
    _card(
        params_m=12.13,
        gmacs=1.9,
        top1=76.6,
        source=_SRC + " (README: 11.9 + 0.2M, 76.6 top-1); the release's exact count is "
        "11,891,712 learnable + 235,298 frozen",
        notes=_RAND_NOTE.format(learn=11.9, frozen=0.2),
        extra={"trainable_params_m": 11.9, "frozen_params_m": 0.2},
    )
)
def randformer_s12(**kwargs: Any) -> MetaFormer:
    return _metaformer(dict(_S12, token_mixers=_RANDOM, **_BASIC), kwargs)


@register_model(_card(params_m=11.9, gmacs=1.8, top1=78.0, source=_SRC))
def poolformerv2_s12(**kwargs: Any) -> MetaFormer:
    return _metaformer(dict(_S12, token_mixers=_POOL, **_BASIC), kwargs)


@register_model(_card(scale="other", notes="S18 depths (3, 3, 9, 3); the paper gives no figures"))
def identityformer_s18(**kwargs: Any) -> MetaFormer:
    return _metaformer(dict(_S18, token_mixers=_IDENTITY, **_BASIC), kwargs)


@register_model(
    _card(
        scale="other",
        notes="S18 depths (3, 3, 9, 3); the paper gives no figures; the random matrices are "
        "frozen parameters (total count includes them, trainable count does not)",
    )
)
def randformer_s18(**kwargs: Any) -> MetaFormer:
    return _metaformer(dict(_S18, token_mixers=_RANDOM, **_BASIC), kwargs)


@register_model(_card(scale="other", notes="S18 depths (3, 3, 9, 3); the paper gives no figures"))
def poolformerv2_s18(**kwargs: Any) -> MetaFormer:
    return _metaformer(dict(_S18, token_mixers=_POOL, **_BASIC), kwargs)


@register_model(_card(params_m=26.8, gmacs=3.9, top1=83.0, source=_SRC))
def convformer_s18(**kwargs: Any) -> MetaFormer:
    return _metaformer(dict(_S18, token_mixers=_CONV, **_RICH), kwargs)


@register_model(
    _card(
        params_m=26.3,
        gmacs=4.1,
        top1=83.6,
        source="official sail-sg/metaformer release as published with timm (26.3M, 4.1 GMACs); "
        "the paper and README round it to 26M",
    )
)
def caformer_s18(**kwargs: Any) -> MetaFormer:
    return _metaformer(dict(_S18, token_mixers=_CA, **_RICH), kwargs)


# CPU variants: 3x3/2 stem, so 32x32 inputs give 16, 8, 4, 2 grids.
_PICO = dict(
    depths=(1, 1, 2, 1),
    dims=(32, 64, 128, 256),
    stem_kernel=3,
    stem_stride=2,
    stem_padding=1,
    img_size=32,
)


def _cpu_card() -> ModelCard:
    return _card(scale="cpu", img_size=32)


@register_model(_cpu_card())
def identityformer_pico(**kwargs: Any) -> MetaFormer:
    return _metaformer(dict(_PICO, token_mixers=_IDENTITY, **_BASIC), kwargs)


@register_model(_cpu_card())
def randformer_pico(**kwargs: Any) -> MetaFormer:
    return _metaformer(dict(_PICO, token_mixers=_RANDOM, **_BASIC), kwargs)


@register_model(_cpu_card())
def poolformerv2_pico(**kwargs: Any) -> MetaFormer:
    return _metaformer(dict(_PICO, token_mixers=_POOL, **_BASIC), kwargs)


@register_model(_cpu_card())
def convformer_pico(**kwargs: Any) -> MetaFormer:
    return _metaformer(dict(_PICO, token_mixers=_CONV, **_RICH), kwargs)


@register_model(_cpu_card())
def caformer_pico(**kwargs: Any) -> MetaFormer:
    return _metaformer(dict(_PICO, token_mixers=_CA, **_RICH), kwargs)
