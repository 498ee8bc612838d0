"""HaloNet (*Scaling Local Self-Attention for Parameter Efficient Visual Backbones*, 2021).

A ResNet-style network whose bottleneck blocks replace the 3x3 convolution by blocked
local self-attention with halos (``archbench.layers.local_attention.HaloAttention``),
in every stage. The first block of stages 2-4 down-samples with strided attention.
The H-family is defined by the paper's scaling knobs: block size ``b``, halo ``h``,
value-width multiplier ``rv``, bottleneck output multiplier ``rb`` (block output is
``rb`` x the stage base width 64/128/256/512, the attention width is the base width),
stage-3 depth ``l3`` and an optional final 1x1 convolution to ``df`` channels.

There is no official code release; the block layout (1x1 -> halo attention -> 1x1,
8 heads in every stage, so stage 1's 64-wide attention has heads of width 8; SiLU; no
attention output projection) follows the paper's description (timm's ``halonet_h1``
uses the same 8 heads; keras_cv_attention_models uses 4 in stage 1) and reproduces its
parameter counts for H0-H7 within 0.5%. Each relative-position table (one for rows, one
for columns, shared by the heads) has 2b + 2h - 1 entries: a query at 0..b-1 of its
block sees keys at -h..b+h-1, so key-minus-query offsets span exactly that many values.
timm sizes the tables 2(b + 2h) - 1 (twice the window) and never reads the 2h extra
entries, so they would be parameters without a gradient. Feature maps whose sides
are not multiples of the block size are zero-padded to the next multiple and the
output is cropped, so any input size works (the paper's sizes tile exactly).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..layers import DropPath, create_act, drop_path_rates
from ..layers.local_attention import HaloAttention
from ._base import FeatureInfo, ImageClassifier
from ._registry import ModelCard, build_model, register_model

__all__ = ["HaloBottleneck", "HaloNet"]


def _conv_bn(cin: int, cout: int, k: int = 1, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout))


class HaloBottleneck(nn.Module):
    """1x1 conv -> halo attention (optionally strided) -> 1x1 conv, residual."""

    def __init__(
        self,
        cin: int,
        width: int,
        cout: int,
        num_heads: int,
        block_size: int,
        halo_size: int,
        value_ratio: float,
        stride: int,
        act: str,
        drop_path: float,
    ) -> None:
        super().__init__()
        vdim = int(width * value_ratio)
        self.conv1 = _conv_bn(cin, width)
        self.act1 = create_act(act)
        self.attn = HaloAttention(width, vdim, num_heads, block_size, halo_size, stride)
        self.bn2 = nn.BatchNorm2d(vdim)
        self.act2 = create_act(act)
        self.conv3 = _conv_bn(vdim, cout)
        nn.init.zeros_(self.conv3[1].weight)
        self.shortcut = (
            _conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.act3 = create_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.conv1(x))
        y = self.act2(self.bn2(self.attn(y)))
        y = self.conv3(y)
        return self.act3(self.drop_path(y) + self.shortcut(x))


class HaloNet(ImageClassifier):
    """HaloNet: halo-attention bottlenecks in all four stages of a ResNet layout."""

    # stage widths are base_widths x output_ratio; final_width (None: no final conv) is kept None
    width_args = ("base_widths", "stem_width", "final_width")
    depth_args = ("depths",)

    def __init__(
        self,
        depths: tuple[int, ...] = (3, 3, 10, 3),
        base_widths: tuple[int, ...] = (64, 128, 256, 512),
        num_heads: tuple[int, ...] = (8, 8, 8, 8),
        block_size: int = 8,
        halo_size: int = 3,
        value_ratio: float = 1.0,
        output_ratio: float = 1.0,
        final_width: int | None = None,
        stem: str = "imagenet",
        stem_width: int = 64,
        act: str = "silu",
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int | tuple[int, int] = 256,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if not len(depths) == len(base_widths) == len(num_heads):
            raise ValueError("depths, base_widths and num_heads need one entry per stage")
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
        self.num_classes, self.in_chans = num_classes, in_chans
        if stem == "imagenet":
            self.stem = nn.Sequential(
                _conv_bn(in_chans, stem_width, 7, 2), create_act(act), nn.MaxPool2d(3, 2, 1)
            )
            reduction = 4
        else:
            self.stem = nn.Sequential(_conv_bn(in_chans, stem_width, 3, 2), create_act(act))
            reduction = 2
        dpr = drop_path_rates(drop_path_rate, depths)
        cin, stages = stem_width, []
        self.feature_info = []
        for i, (depth, base, heads) in enumerate(zip(depths, base_widths, num_heads)):
            cout = int(base * output_ratio)
            blocks = []
            for j in range(depth):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(
                    HaloBottleneck(
                        cin,
                        base,
                        cout,
                        heads,
                        block_size,
                        halo_size,
                        value_ratio,
                        stride,
                        act,
                        dpr[i][j],
                    )
                )
                cin = cout
            reduction *= 2 if i > 0 else 1
            stages.append(nn.Sequential(*blocks))
            self.feature_info.append(FeatureInfo(cout, reduction, f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        if final_width:
            self.final_conv: nn.Module = nn.Sequential(_conv_bn(cin, final_width), create_act(act))
            cin = final_width
        else:
            self.final_conv = nn.Identity()
        self.num_features = cin
        self.cam_target = f"stages.{len(depths) - 1}"
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(cin, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.final_conv(self.stages(self.stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x.mean(dim=(2, 3)))
        return x if pre_logits else self.head(x)


_PAPER = "Scaling Local Self-Attention for Parameter Efficient Visual Backbones"
_SRC = (
    "HaloNet paper's H0-H7 table (b, h, rv, rb, l3, df, image size, params, top-1), as "
    "transcribed in leondgarse/keras_cv_attention_models halonet/README.md; no official code"
)


def _halonet(
    b: int, h: int, rv: float, rb: float, l3: int, df: int | None, size: int, kwargs: dict[str, Any]
) -> HaloNet:
    defaults = dict(
        block_size=b,
        halo_size=h,
        value_ratio=rv,
        output_ratio=rb,
        depths=(3, 3, l3, 3),
        final_width=df,
        img_size=size,
    )
    return build_model(HaloNet, defaults, kwargs)


def _card(params: float, top1: float, size: int) -> ModelCard:
    return ModelCard(
        "halonet", _PAPER, 2021, "hybrid", params_m=params, top1=top1, img_size=size, source=_SRC
    )


@register_model(_card(5.5, 77.9, 256))
def halonet_h0(**kwargs: Any) -> HaloNet:
    return _halonet(8, 3, 1.0, 0.5, 7, None, 256, kwargs)


@register_model(_card(8.1, 79.9, 256))
def halonet_h1(**kwargs: Any) -> HaloNet:
    return _halonet(8, 3, 1.0, 1.0, 10, None, 256, kwargs)


@register_model(_card(9.4, 80.4, 256))
def halonet_h2(**kwargs: Any) -> HaloNet:
    return _halonet(8, 3, 1.0, 1.25, 11, None, 256, kwargs)


@register_model(_card(11.8, 81.9, 320))
def halonet_h3(**kwargs: Any) -> HaloNet:
    return _halonet(10, 3, 1.0, 1.5, 12, 1024, 320, kwargs)


@register_model(_card(19.1, 83.3, 384))
def halonet_h4(**kwargs: Any) -> HaloNet:
    return _halonet(12, 2, 1.0, 3.0, 12, 1280, 384, kwargs)


@register_model(_card(30.7, 84.0, 448))
def halonet_h5(**kwargs: Any) -> HaloNet:
    return _halonet(14, 2, 2.5, 2.0, 23, 1536, 448, kwargs)


@register_model(_card(43.4, 84.4, 512))
def halonet_h6(**kwargs: Any) -> HaloNet:
    return _halonet(8, 4, 3.0, 2.75, 24, 1536, 512, kwargs)


@register_model(_card(67.4, 84.9, 600))
def halonet_h7(**kwargs: Any) -> HaloNet:
    return _halonet(10, 3, 4.0, 3.5, 26, 2048, 600, kwargs)


@register_model(
    ModelCard(
        "halonet",
        _PAPER,
        2021,
        "hybrid",
        scale="cpu",
        img_size=32,
        notes="3x3/2 stem; grids 16/8/4/2; 4x4 blocks with a 1-pixel halo",
    )
)
def halonet_pico(**kwargs: Any) -> HaloNet:
    defaults = dict(
        depths=(1, 1, 2, 1),
        base_widths=(16, 32, 64, 128),
        num_heads=(2, 2, 4, 4),
        block_size=4,
        halo_size=1,
        stem="cifar",
        stem_width=16,
        img_size=32,
    )
    return build_model(HaloNet, defaults, kwargs)
