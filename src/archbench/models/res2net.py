"""Res2Net.

*Res2Net: A New Multi-scale Backbone Architecture* (Gao et al., 2021). The 3x3
convolution of a ResNet bottleneck is replaced by ``scale`` groups of ``width``
channels connected hierarchically: the first group passes through unchanged, and each
following group is added to the output of the previous one before its own 3x3
convolution, so that the receptive fields inside one block grow step by step. In the
first block of a stage the groups are not chained (there is no earlier output of the
same resolution) and the untouched group is average-pooled with the block's stride, as
in the official release.

Res2Net-50 26w x 4s: ResNet-50's layout, ``base_width=26`` (26 channels per group for the
64-wide first stage), ``scale=4``; ResNet-50's 7x7 stem and 1x1 strided projection
shortcuts.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..layers import DropPath, create_attn, drop_path_rates
from ..layers.conv import ConvNormAct
from ..layers.helpers import add_residual_, init_kaiming_conv
from ._base import FeatureInfo, ImageClassifier
from ._registry import ModelCard, build_model, register_model

__all__ = ["Res2Net", "Res2NetBottleneck"]


class Res2NetBottleneck(nn.Module):
    """Bottle2neck: 1x1 conv, hierarchical 3x3 convs over ``scale`` splits, 1x1 conv."""

    expansion = 4

    def __init__(
        self,
        cin: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        base_width: int = 26,
        scale: int = 4,
        first: bool = False,
        attn_layer: str | None = None,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if scale < 1:
            raise ValueError(f"scale must be >= 1, got {scale}")
        width = int(planes * base_width / 64)
        if width < 1:
            raise ValueError(f"planes={planes} with base_width={base_width} leaves no channels")
        out = planes * self.expansion
        self.width, self.scale, self.first = width, scale, first
        self.conv1 = ConvNormAct(cin, width * scale, 1)
        n = max(1, scale - 1)
        self.convs = nn.ModuleList(ConvNormAct(width, width, 3, stride) for _ in range(n))
        self.pool = nn.AvgPool2d(3, stride, 1) if first and scale > 1 else None
        self.conv3 = ConvNormAct(width * scale, out, 1, act=None)
        self.attn = create_attn(attn_layer, out)
        self.downsample = downsample
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.act = nn.ReLU(inplace=True)  # on the residual sum

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv3.norm.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        splits = torch.split(self.conv1(x), self.width, 1)
        outs = []
        y = splits[0]
        for i, conv in enumerate(self.convs):
            y = conv(splits[i] if i == 0 or self.first else y + splits[i])
            outs.append(y)
        if self.scale > 1:
            last = splits[-1]
            outs.append(self.pool(last) if self.pool is not None else last)
        y = self.attn(self.conv3(torch.cat(outs, 1)))
        del splits, outs
        # the projected shortcut is made last, so it is not held through the branch
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.act(add_residual_(self.drop_path(y), shortcut))


class Res2Net(ImageClassifier):
    """ResNet skeleton with Res2Net bottlenecks. ``stem="cifar"`` is one 3x3/1 conv."""

    # base_width is the split width per 64 channels of widths, a ratio that follows widths
    width_args = ("widths", "stem_width")
    depth_args = ("layers",)

    def __init__(
        self,
        layers: tuple[int, ...] = (3, 4, 6, 3),
        widths: tuple[int, ...] = (64, 128, 256, 512),
        base_width: int = 26,
        scale: int = 4,
        stem: str = "imagenet",
        stem_width: int = 64,
        attn_layer: str | None = None,
        zero_init_last: bool = True,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if len(layers) != len(widths) or not layers:
            raise ValueError(f"layers {layers} and widths {widths} must be non-empty and match")
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"unknown stem {stem!r}; choose 'imagenet' or 'cifar'")
        self.num_classes, self.in_chans = num_classes, in_chans
        if stem == "imagenet":
            self.stem = nn.Sequential(
                ConvNormAct(in_chans, stem_width, 7, 2), nn.MaxPool2d(3, 2, 1)
            )
            reduction = 4
        else:
            self.stem = ConvNormAct(in_chans, stem_width, 3)
            reduction = 1
        # padded strided layers map any input size onto the stages: no size constraint
        dpr = drop_path_rates(drop_path_rate, layers)
        cin, stages, self.feature_info = stem_width, [], []
        for i, (depth, planes) in enumerate(zip(layers, widths)):
            stride = 1 if i == 0 else 2
            reduction *= stride
            cout = planes * Res2NetBottleneck.expansion
            blocks = []
            for j in range(depth):
                s = stride if j == 0 else 1
                down = None
                if s != 1 or cin != cout:
                    down = ConvNormAct(cin, cout, 1, s, act=None)
                blocks.append(
                    Res2NetBottleneck(
                        cin, planes, s, down, base_width, scale, j == 0, attn_layer, dpr[i][j]
                    )
                )
                cin = cout
            stages.append(nn.Sequential(*blocks))
            self.feature_info.append(FeatureInfo(cout, reduction, f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.cam_target = f"stages.{len(stages) - 1}"
        self.num_features = cin
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(cin, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(init_kaiming_conv)
        if zero_init_last:
            for m in self.modules():
                if isinstance(m, Res2NetBottleneck):
                    m.zero_init_last()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.stages(self.stem(x))


_R2N = "Res2Net: A New Multi-scale Backbone Architecture"


@register_model(
    ModelCard(
        "res2net",
        _R2N,
        2021,
        "cnn",
        params_m=25.70,
        gmacs=4.2,
        top1=77.99,
        source="paper (Res2Net-50 26w x 4s: top-1 error 22.01, 25.7M params, 4.2 GFLOPs); "
        "exact count of the official release: 25,699,128",
    )
)
def res2net50_26w_4s(**kwargs: Any) -> Res2Net:
    return build_model(Res2Net, dict(layers=(3, 4, 6, 3), base_width=26, scale=4), kwargs)


@register_model(
    ModelCard(
        "res2net",
        _R2N,
        2021,
        "cnn",
        params_m=45.21,
        top1=79.19,
        source="top-1 error 20.81 of the released Res2Net-101 26w x 4s weights; params of "
        "the official release's res2net101_26w_4s (45.21M)",
    )
)
def res2net101_26w_4s(**kwargs: Any) -> Res2Net:
    return build_model(Res2Net, dict(layers=(3, 4, 23, 3), base_width=26, scale=4), kwargs)


@register_model(ModelCard("res2net", _R2N, 2021, "cnn", scale="cpu", img_size=32))
def res2net_pico(**kwargs: Any) -> Res2Net:
    """One Res2Net bottleneck per stage, widths 16-128 (x4 out), 4 scales, CIFAR stem."""
    return build_model(
        Res2Net,
        dict(
            layers=(1, 1, 1, 1),
            widths=(16, 32, 64, 128),
            stem_width=16,
            stem="cifar",
            img_size=32,
        ),
        kwargs,
    )
