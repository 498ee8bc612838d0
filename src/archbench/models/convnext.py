"""ConvNeXt (*A ConvNet for the 2020s*, Liu et al., 2022).

A ResNet modernised step by step towards a Swin-like design: a 4x4/4 "patchify" stem
with a channels-first LayerNorm, stages of (3, 3, 9, 3) or (3, 3, 27, 3) blocks, and
separate downsampling layers (LayerNorm then a 2x2/2 convolution) between stages. Each
block is a 7x7 depthwise convolution, a LayerNorm, an inverted MLP (x4, GELU), a
per-channel layer scale initialised to 1e-6 and stochastic depth on the residual. The
pooled features pass a final LayerNorm before the linear head.

Tensors are NCHW between blocks; a block permutes to channels-last for its LayerNorm and
MLP (linear layers), as the paper's reference design does.

CPU variants (``convnext_pico``, ``convnext_nano``) keep the block and the stage layout
but use a 2x2/2 stem, so that a 32x32 image gives a 16x16 grid and the last stage sees
2x2 instead of shrinking to a single pixel.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..layers import DropPath, LayerNorm2d, LayerScale, drop_path_rates
from ..layers.helpers import init_trunc_normal
from ._base import FeatureInfo, ImageClassifier, check_img_size
from ._registry import ModelCard, build_model, register_model

__all__ = ["ConvNeXt", "ConvNeXtBlock"]


class ConvNeXtBlock(nn.Module):
    """dw7x7 -> LayerNorm -> Linear(4C) -> GELU -> Linear(C) -> layer scale, plus residual."""

    def __init__(
        self,
        dim: int,
        mlp_ratio: float = 4.0,
        kernel_size: int = 7,
        layer_scale_init: float | None = 1e-6,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(mlp_ratio * dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.ls = LayerScale(dim, layer_scale_init) if layer_scale_init else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv_dw(x).permute(0, 2, 3, 1)  # NCHW -> NHWC for LN and the MLP
        x = self.ls(self.fc2(self.act(self.fc1(self.norm(x)))))
        return shortcut + self.drop_path(x.permute(0, 3, 1, 2))


class ConvNeXt(ImageClassifier):
    """ConvNeXt: patchify stem, four stages with LN + 2x2/2 downsampling, LN + linear head."""

    width_args = ("dims",)
    depth_args = ("depths",)

    def __init__(
        self,
        depths: tuple[int, ...] = (3, 3, 9, 3),
        dims: tuple[int, ...] = (96, 192, 384, 768),
        stem_patch: int = 4,
        kernel_size: int = 7,
        mlp_ratio: float = 4.0,
        layer_scale_init: float | None = 1e-6,
        head_init_scale: float = 1.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if len(depths) != len(dims) or not depths:
            raise ValueError(f"depths {depths} and dims {dims} must be non-empty and equally long")
        if stem_patch < 1:
            raise ValueError(f"stem_patch must be >= 1, got {stem_patch}")
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        # the patchify stem and 2x2/2 downsamplers drop remainders: any size that reaches
        # the last stage works
        self.min_input_size = stem_patch * 2 ** (len(depths) - 1)
        check_img_size(img_size, 1, type(self).__name__, min_size=self.min_input_size)

        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, dims[0], stem_patch, stride=stem_patch), LayerNorm2d(dims[0])
        )
        dprs = drop_path_rates(drop_path_rate, depths)
        self.downsample = nn.ModuleList()
        self.stages = nn.ModuleList()
        self.feature_info = []
        reduction = stem_patch
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            if i == 0:
                self.downsample.append(nn.Identity())
            else:
                self.downsample.append(
                    nn.Sequential(LayerNorm2d(dims[i - 1]), nn.Conv2d(dims[i - 1], dim, 2, 2))
                )
                reduction *= 2
            self.stages.append(
                nn.Sequential(
                    *[
                        ConvNeXtBlock(dim, mlp_ratio, kernel_size, layer_scale_init, dprs[i][j])
                        for j in range(depth)
                    ]
                )
            )
            self.feature_info.append(FeatureInfo(dim, reduction, f"stages.{i}"))
        self.num_features = dims[-1]
        self.cam_target = f"stages.{len(depths) - 1}"
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights(head_init_scale)

    def _init_weights(self, head_init_scale: float) -> None:
        self.apply(init_trunc_normal)
        if isinstance(self.head, nn.Linear):
            with torch.no_grad():
                self.head.weight.mul_(head_init_scale)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.stem(x)
        for down, stage in zip(self.downsample, self.stages):
            x = stage(down(x))
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.norm(x.mean((2, 3))))
        return x if pre_logits else self.head(x)


def _convnext(defaults: dict[str, Any], kwargs: dict[str, Any]) -> ConvNeXt:
    return build_model(ConvNeXt, defaults, kwargs)


_PAPER = "A ConvNet for the 2020s"
_SRC = (
    "paper Table 1 (ImageNet-1k, 224px: T 4.5G FLOPs 82.1, S 8.7G 83.1, B 15.4G 83.8); "
    "exact params of the official facebookresearch/ConvNeXt release"
)


@register_model(
    ModelCard("convnext", _PAPER, 2022, "cnn", params_m=28.59, gmacs=4.5, top1=82.1, source=_SRC)
)
def convnext_tiny(**kwargs: Any) -> ConvNeXt:
    return _convnext(dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768)), kwargs)


@register_model(
    ModelCard("convnext", _PAPER, 2022, "cnn", params_m=50.22, gmacs=8.7, top1=83.1, source=_SRC)
)
def convnext_small(**kwargs: Any) -> ConvNeXt:
    return _convnext(dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768)), kwargs)


@register_model(
    ModelCard("convnext", _PAPER, 2022, "cnn", params_m=88.59, gmacs=15.4, top1=83.8, source=_SRC)
)
def convnext_base(**kwargs: Any) -> ConvNeXt:
    return _convnext(dict(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024)), kwargs)


@register_model(ModelCard("convnext", _PAPER, 2022, "cnn", scale="cpu", img_size=32))
def convnext_pico(**kwargs: Any) -> ConvNeXt:
    """Depths (1, 1, 2, 1), widths 32-256, 2x2/2 stem: grids 16, 8, 4, 2 at 32x32."""
    return _convnext(
        dict(depths=(1, 1, 2, 1), dims=(32, 64, 128, 256), stem_patch=2, img_size=32), kwargs
    )


@register_model(ModelCard("convnext", _PAPER, 2022, "cnn", scale="cpu", img_size=32))
def convnext_nano(**kwargs: Any) -> ConvNeXt:
    """Depths (2, 2, 6, 2), widths 48-384, 2x2/2 stem: grids 16, 8, 4, 2 at 32x32."""
    return _convnext(
        dict(depths=(2, 2, 6, 2), dims=(48, 96, 192, 384), stem_patch=2, img_size=32), kwargs
    )
