"""MambaOut: a hierarchy of Gated CNN blocks, Mamba without its state-space model.

*MambaOut: Do We Really Need Mamba for Vision?* (Yu & Wang, 2024). Stem of two 3x3/2
convs (LayerNorm, GELU between), 3x3/2 conv + LayerNorm downsampling between stages,
Gated CNN blocks (7x7 depthwise, expansion 8/3), global average pool -> LayerNorm -> an
MLP head (fc 4x, GELU, LayerNorm, fc). ``stem_stride=2`` (first stem conv at stride 1)
is for 32x32 inputs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..layers import LayerNorm2d, MlpHead, drop_path_rates
from ..layers.gated_cnn import GatedCNNBlock
from ..layers.helpers import init_trunc_normal
from ._base import FeatureInfo, ImageClassifier
from ._registry import ModelCard, build_model, register_model

__all__ = ["MambaOut"]


class MambaOut(ImageClassifier):
    width_args = ("dims",)
    depth_args = ("depths",)

    def __init__(
        self,
        depths: tuple[int, ...] = (3, 3, 9, 3),
        dims: tuple[int, ...] = (96, 192, 384, 576),
        kernel_size: int = 7,
        conv_ratio: float = 1.0,
        expansion_ratio: float = 8 / 3,
        head_mlp_ratio: float = 4.0,
        stem_stride: int = 4,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if len(depths) != len(dims) or not depths:
            raise ValueError(f"depths {depths} and dims {dims} must be non-empty, same length")
        if stem_stride not in (2, 4):
            raise ValueError(f"stem_stride must be 2 or 4, got {stem_stride}")
        self.num_classes, self.in_chans = num_classes, in_chans
        self.head_mlp_ratio, self.drop_rate = head_mlp_ratio, drop_rate
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, dims[0] // 2, 3, stride=stem_stride // 2, padding=1),
            LayerNorm2d(dims[0] // 2),
            nn.GELU(),
            nn.Conv2d(dims[0] // 2, dims[0], 3, stride=2, padding=1),
            LayerNorm2d(dims[0]),
        )
        dprs = drop_path_rates(drop_path_rate, depths)
        self.stages = nn.ModuleList()
        self.feature_info = []
        reduction = stem_stride
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            layers: list[nn.Module] = []
            if i > 0:
                layers += [nn.Conv2d(dims[i - 1], dim, 3, 2, 1), LayerNorm2d(dim)]
                reduction *= 2
            layers += [
                GatedCNNBlock(dim, expansion_ratio, kernel_size, conv_ratio, drop_path=dprs[i][j])
                for j in range(depth)
            ]
            self.stages.append(nn.Sequential(*layers))
            self.feature_info.append(FeatureInfo(dim, reduction, f"stages.{i}"))
        # padded strided layers map any input size onto the stages: no size constraint
        self.num_features = dims[-1]
        self.cam_target = f"stages.{len(dims) - 1}"
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.reset_classifier(num_classes)
        self.apply(self._init_weights)

    _init_weights = staticmethod(init_trunc_normal)

    def reset_classifier(self, num_classes: int) -> None:
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        self.num_classes = num_classes
        self.head = (
            MlpHead(self.num_features, num_classes, self.head_mlp_ratio, self.drop_rate)
            if num_classes > 0
            else nn.Identity()
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.norm(x.mean((2, 3)))
        return x if pre_logits else self.head(x)


_PAPER = "MambaOut: Do We Really Need Mamba for Vision?"
_SRC = "MambaOut paper Table 1 / official release README (yuweihao/MambaOut), 224px"


def _card(params: float | None, gmacs: float | None, top1: float | None, **kw: Any) -> ModelCard:
    return ModelCard(
        "mambaout",
        _PAPER,
        2024,
        "cnn",
        params_m=params,
        gmacs=gmacs,
        top1=top1,
        source=_SRC if params else "",
        **kw,
    )


@register_model(_card(7.3, 1.2, 78.9))
def mambaout_femto(**kwargs: Any) -> MambaOut:
    return build_model(MambaOut, dict(depths=(3, 3, 9, 3), dims=(48, 96, 192, 288)), kwargs)


@register_model(_card(9.1, 1.5, 80.0))
def mambaout_kobe(**kwargs: Any) -> MambaOut:
    return build_model(MambaOut, dict(depths=(3, 3, 15, 3), dims=(48, 96, 192, 288)), kwargs)


@register_model(_card(26.5, 4.5, 82.7))
def mambaout_tiny(**kwargs: Any) -> MambaOut:
    return build_model(MambaOut, dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 576)), kwargs)


@register_model(_card(48.5, 9.0, 84.1))
def mambaout_small(**kwargs: Any) -> MambaOut:
    return build_model(MambaOut, dict(depths=(3, 4, 27, 3), dims=(96, 192, 384, 576)), kwargs)


@register_model(_card(84.8, 15.8, 84.2))
def mambaout_base(**kwargs: Any) -> MambaOut:
    return build_model(MambaOut, dict(depths=(3, 4, 27, 3), dims=(128, 256, 512, 768)), kwargs)


@register_model(
    _card(
        None,
        None,
        None,
        scale="cpu",
        img_size=32,
        notes="stem stride 2: a 32x32 input gives 16, 8, 4, 2 grids",
    )
)
def mambaout_pico(**kwargs: Any) -> MambaOut:
    return build_model(
        MambaOut,
        dict(depths=(1, 1, 2, 1), dims=(16, 32, 64, 96), stem_stride=2, img_size=32),
        kwargs,
    )
