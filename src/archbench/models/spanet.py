"""SPANet: a MetaFormer with the spectral pooling aggregation modulation (SPAM) mixer.

*SPANet: Frequency-balancing Token Mixer using Spectral Pooling Aggregation Modulation*
(Yun et al., ICCV 2023). The layout follows the official release, which is PoolFormer's:
a 7x7/4 conv stem, 3x3/2 conv downsampling, blocks of GroupNorm(1) -> SPAM -> residual
and GroupNorm(1) -> GELU MLP (ratio 4, with biases) -> residual, res-scale in the last two
stages, then GroupNorm(1), average pool and a linear head. SPAM
(``archbench.layers.freq_mixers.SpectralPoolingAggregationModulation``) uses filter radius
2, 2, 1, 1 by stage; its fixed filters are frozen parameters sized for the build
resolution, so they count in the parameter total as in the release.

CPU variants use a 3x3/2 stem so that 32x32 inputs give 16, 8, 4, 2 grids.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..layers import MetaFormerBlock, drop_path_rates
from ..layers.helpers import init_trunc_normal_linear
from ..layers.norm import GroupNorm1
from ._base import FeatureInfo, ImageClassifier, check_img_size, min_side_for_convs
from ._registry import ModelCard, build_model, register_model

__all__ = ["SPANet"]


class SPANet(ImageClassifier):
    width_args = ("dims",)
    depth_args = ("depths",)

    def __init__(
        self,
        depths: tuple[int, ...] = (4, 4, 12, 4),
        dims: tuple[int, ...] = (64, 128, 320, 512),
        radii: tuple[float, ...] = (2, 2, 1, 1),
        mlp_ratio: float = 4.0,
        kernel_size: int = 7,
        res_scale_init: tuple[float | None, ...] = (None, None, 1.0, 1.0),
        stem_kernel: int = 7,
        stem_stride: int = 4,
        stem_padding: int = 2,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        n = len(depths)
        if not n or any(len(t) != n for t in (dims, radii, res_scale_init)):
            raise ValueError("depths, dims, radii and res_scale_init must have the same length")
        # padded convolutions and filters made for any grid: any size the stem's kernel fits
        self.min_input_size = min_side_for_convs([(stem_kernel, stem_stride, stem_padding)])
        size = check_img_size(img_size, 1, "SPANet", min_size=self.min_input_size)
        self.num_classes, self.in_chans = num_classes, in_chans
        self.stem = nn.Conv2d(in_chans, dims[0], stem_kernel, stem_stride, stem_padding)
        grid = tuple((s + 2 * stem_padding - stem_kernel) // stem_stride + 1 for s in size)
        dprs = drop_path_rates(drop_path_rate, depths)
        self.stages = nn.ModuleList()
        self.feature_info = []
        reduction = stem_stride
        for i in range(n):
            layers: list[nn.Module] = []
            if i > 0:
                layers.append(nn.Conv2d(dims[i - 1], dims[i], 3, 2, 1))
                grid = tuple((g - 1) // 2 + 1 for g in grid)
                reduction *= 2
            layers += [
                MetaFormerBlock(
                    dims[i],
                    token_mixer="spam",
                    mixer_kwargs=dict(radius=radii[i], kernel_size=kernel_size),
                    input_size=grid,
                    mlp_ratio=mlp_ratio,
                    mlp_act="gelu",
                    mlp_bias=True,
                    norm="groupnorm1",
                    drop=drop_rate,
                    drop_path=dprs[i][j],
                    res_scale_init=res_scale_init[i],
                )
                for j in range(depths[i])
            ]
            self.stages.append(nn.Sequential(*layers))
            self.feature_info.append(FeatureInfo(dims[i], reduction, f"stages.{i}"))
        self.norm = GroupNorm1(dims[-1])
        self.num_features = dims[-1]
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.cam_target = f"stages.{n - 1}"
        self.apply(init_trunc_normal_linear)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.norm(x).mean((2, 3)))
        return x if pre_logits else self.head(x)


_PAPER = "SPANet: Frequency-balancing Token Mixer using Spectral Pooling Aggregation Modulation"
_SRC = "SPANet official README (DoranLyong/SPANet-official), ImageNet-1k 224px"
_SMALL = (64, 128, 320, 512)
_BASE = (96, 192, 384, 768)


def _card(params: float, gmacs: float, top1: float, ours: float | None = None) -> ModelCard:
    # The README rounds to whole millions. Our counts round to the same figures for all five
    # variants, but S (28.66M) and M (41.77M) are more than 0.5% from the rounded figure, so
    # they are registered as "other" rather than canonical.
    extra: dict[str, Any] = {}
    if ours is not None:
        extra = dict(scale="other", notes=f"README rounds to {params}M; this layout counts {ours}M")
    return ModelCard(
        "spanet",
        _PAPER,
        2023,
        "metaformer",
        params_m=params,
        gmacs=gmacs,
        top1=top1,
        source=_SRC,
        **extra,
    )


@register_model(_card(29, 4.6, 83.1, ours=28.66))
def spanet_small(**kwargs: Any) -> SPANet:
    return build_model(SPANet, dict(depths=(4, 4, 12, 4), dims=_SMALL), kwargs)


@register_model(_card(42, 6.8, 83.5, ours=41.77))
def spanet_medium(**kwargs: Any) -> SPANet:
    return build_model(SPANet, dict(depths=(6, 6, 18, 6), dims=_SMALL), kwargs)


@register_model(_card(55, 9.0, 83.8))
def spanet_medium_x(**kwargs: Any) -> SPANet:
    return build_model(SPANet, dict(depths=(8, 8, 24, 8), dims=_SMALL), kwargs)


@register_model(_card(76, 12.0, 84.0))
def spanet_base(**kwargs: Any) -> SPANet:
    return build_model(SPANet, dict(depths=(6, 6, 18, 6), dims=_BASE), kwargs)


@register_model(_card(100, 15.8, 84.4))
def spanet_base_x(**kwargs: Any) -> SPANet:
    return build_model(SPANet, dict(depths=(8, 8, 24, 8), dims=_BASE), kwargs)


@register_model(
    ModelCard(
        "spanet",
        _PAPER,
        2023,
        "metaformer",
        scale="cpu",
        img_size=32,
        notes="3x3/2 stem: 16, 8, 4, 2 grids",
    )
)
def spanet_pico(**kwargs: Any) -> SPANet:
    cfg = dict(
        depths=(1, 1, 2, 1),
        dims=(24, 48, 96, 192),
        stem_kernel=3,
        stem_stride=2,
        stem_padding=1,
        img_size=32,
    )
    return build_model(SPANet, cfg, kwargs)
