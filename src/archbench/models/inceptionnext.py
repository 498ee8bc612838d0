"""InceptionNeXt: MetaNeXt blocks whose token mixer is an inception depthwise convolution.

*InceptionNeXt: When Inception Meets ConvNeXt* (Yu et al., CVPR 2024). The mixer splits
the channels four ways: most pass through unchanged (the identity branch), and three
groups of ``branch_ratio * C`` channels go through a 3x3 depthwise conv, a 1 x k band
and a k x 1 band depthwise conv. A block is mixer -> BN -> 1x1 MLP -> layer scale plus
the identity; the classifier is an MLP head (Linear 3x -> GELU -> LayerNorm -> Linear).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..layers import ConvMlp, DropPath, LayerScale2d, MlpHead, drop_path_rates
from ..layers.helpers import init_trunc_normal
from ._base import FeatureInfo, ImageClassifier
from ._registry import ModelCard, build_model, register_model

__all__ = ["InceptionDWConv2d", "InceptionNeXt", "MetaNeXtBlock", "MlpHead"]


class InceptionDWConv2d(nn.Module):
    """Identity / square / horizontal-band / vertical-band depthwise branches (InceptionNeXt)."""

    def __init__(
        self,
        dim: int,
        square_kernel: int = 3,
        band_kernel: int = 11,
        branch_ratio: float = 0.125,
    ) -> None:
        super().__init__()
        gc = int(dim * branch_ratio)
        if gc < 1 or 3 * gc > dim:
            raise ValueError(
                f"branch_ratio {branch_ratio} gives {gc} channels per branch for dim {dim}; "
                "need 1 <= dim * branch_ratio <= dim / 3"
            )
        self.dwconv_hw = nn.Conv2d(gc, gc, square_kernel, padding=square_kernel // 2, groups=gc)
        self.dwconv_w = nn.Conv2d(
            gc, gc, (1, band_kernel), padding=(0, band_kernel // 2), groups=gc
        )
        self.dwconv_h = nn.Conv2d(
            gc, gc, (band_kernel, 1), padding=(band_kernel // 2, 0), groups=gc
        )
        self.split = (dim - 3 * gc, gc, gc, gc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_id, x_hw, x_w, x_h = torch.split(x, self.split, dim=1)
        return torch.cat((x_id, self.dwconv_hw(x_hw), self.dwconv_w(x_w), self.dwconv_h(x_h)), 1)


class MetaNeXtBlock(nn.Module):
    """x + drop_path(gamma * MLP(BN(mixer(x)))) (MetaNeXt block of InceptionNeXt)."""

    def __init__(
        self,
        dim: int,
        mlp_ratio: float = 4.0,
        band_kernel: int = 11,
        branch_ratio: float = 0.125,
        ls_init_value: float = 1e-6,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.token_mixer = InceptionDWConv2d(
            dim, band_kernel=band_kernel, branch_ratio=branch_ratio
        )
        self.norm = nn.BatchNorm2d(dim)
        self.mlp = ConvMlp(dim, int(mlp_ratio * dim), act="gelu")
        self.ls = LayerScale2d(dim, ls_init_value) if ls_init_value > 0 else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.ls(self.mlp(self.norm(self.token_mixer(x)))))


class InceptionNeXt(ImageClassifier):
    """InceptionNeXt: 4x4/4 conv-BN stem, four MetaNeXt stages with BN + 2x2/2 conv downsampling.

    ``pre_logits`` are the pooled last-stage features (width ``dims[-1]``); the MLP head
    is the classifier, and ``reset_classifier`` builds a new one.
    """

    width_args = ("dims",)
    depth_args = ("depths",)

    def __init__(
        self,
        depths: tuple[int, ...] = (3, 3, 9, 3),
        dims: tuple[int, ...] = (96, 192, 384, 768),
        mlp_ratios: tuple[float, ...] = (4, 4, 4, 3),
        head_mlp_ratio: float = 3.0,
        band_kernel: int = 11,
        branch_ratio: float = 0.125,
        stem_stride: int = 4,
        ls_init_value: float = 1e-6,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if not (len(depths) == len(dims) == len(mlp_ratios)):
            raise ValueError(
                f"depths {depths}, dims {dims} and mlp_ratios {mlp_ratios} need equal lengths"
            )
        if stem_stride < 1:
            raise ValueError(f"stem_stride must be >= 1, got {stem_stride}")
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        self.head_mlp_ratio = head_mlp_ratio
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, dims[0], stem_stride, stride=stem_stride), nn.BatchNorm2d(dims[0])
        )
        dprs = drop_path_rates(drop_path_rate, depths)
        reduction = stem_stride
        self.stages = nn.ModuleList()
        self.feature_info = []
        for i, dim in enumerate(dims):
            layers: list[nn.Module] = []
            if i > 0:
                layers.append(
                    nn.Sequential(nn.BatchNorm2d(dims[i - 1]), nn.Conv2d(dims[i - 1], dim, 2, 2))
                )
                reduction *= 2
            layers += [
                MetaNeXtBlock(dim, mlp_ratios[i], band_kernel, branch_ratio, ls_init_value, d)
                for d in dprs[i]
            ]
            self.stages.append(nn.Sequential(*layers))
            self.feature_info.append(FeatureInfo(dim, reduction, f"stages.{i}"))
        # the patchify stem and 2x2/2 downsamplers drop remainders: any size that reaches
        # the last stage works
        self.min_input_size = reduction
        self.num_features = dims[-1]
        self.cam_target = f"stages.{len(dims) - 1}"
        self.head = (
            MlpHead(dims[-1], num_classes, head_mlp_ratio, drop_rate)
            if num_classes > 0
            else nn.Identity()
        )
        self.apply(self._init_weights)

    _init_weights = staticmethod(init_trunc_normal)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((2, 3))
        return x if pre_logits else self.head(x)

    def reset_classifier(self, num_classes: int) -> None:
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        self.num_classes = num_classes
        self.head = (
            MlpHead(self.num_features, num_classes, self.head_mlp_ratio, self.drop_rate)
            if num_classes > 0
            else nn.Identity()
        )


_PAPER = "InceptionNeXt: When Inception Meets ConvNeXt"
_SRC = (
    "paper Table 1 (ImageNet-1K, 224px: MACs, top-1; params rounded to 28/49/87M); exact params "
    "of the official sail_in1k weights as listed on their model cards"
)


@register_model(
    ModelCard(
        "inceptionnext", _PAPER, 2024, "cnn", params_m=28.1, gmacs=4.2, top1=82.3, source=_SRC
    )
)
def inceptionnext_tiny(**kwargs: Any) -> InceptionNeXt:
    return build_model(InceptionNeXt, dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768)), kwargs)


@register_model(
    ModelCard(
        "inceptionnext", _PAPER, 2024, "cnn", params_m=49.4, gmacs=8.4, top1=83.5, source=_SRC
    )
)
def inceptionnext_small(**kwargs: Any) -> InceptionNeXt:
    return build_model(InceptionNeXt, dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768)), kwargs)


@register_model(
    ModelCard(
        "inceptionnext", _PAPER, 2024, "cnn", params_m=86.7, gmacs=14.9, top1=84.0, source=_SRC
    )
)
def inceptionnext_base(**kwargs: Any) -> InceptionNeXt:
    return build_model(
        InceptionNeXt, dict(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024)), kwargs
    )


@register_model(ModelCard("inceptionnext", _PAPER, 2024, "cnn", scale="cpu", img_size=32))
def inceptionnext_pico(**kwargs: Any) -> InceptionNeXt:
    """2x2/2 stem (16x16 grid), widths 32-256, 7-tap bands, 2 MLP ratio in the head."""
    return build_model(
        InceptionNeXt,
        dict(
            depths=(1, 1, 2, 1),
            dims=(32, 64, 128, 256),
            band_kernel=7,
            stem_stride=2,
            head_mlp_ratio=2.0,
            img_size=32,
        ),
        kwargs,
    )
