"""ResNeSt.

*ResNeSt: Split-Attention Networks* (Zhang et al., 2022). The 3x3 convolution of a
ResNet bottleneck becomes a split-attention convolution: a grouped convolution produces
``radix`` feature-map splits in each of ``cardinality`` groups; their sum is pooled
globally, passed through a two-layer bottleneck (1x1 conv, BN, ReLU, 1x1 conv), and a
softmax across the radix splits (a sigmoid when ``radix=1``) gives per-channel weights
for a weighted sum of the splits. With ``radix=1`` the block is a grouped convolution
followed by a squeeze-and-excitation style gate.

ResNeSt-50 (2s1x64d) also uses the release's network tweaks: a deep stem of three 3x3
convolutions (32, 32, 64), strided blocks that average-pool (3x3) after the
split-attention convolution instead of striding it, and ResNet-D shortcuts
(average pool, then a 1x1 convolution).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..layers import DropPath, drop_path_rates
from ..layers.conv import ConvNormAct
from ..layers.helpers import add_residual_, init_kaiming_conv
from ._base import FeatureInfo, ImageClassifier
from ._registry import ModelCard, build_model, register_model

__all__ = ["ResNeSt", "ResNeStBottleneck", "SplitAttnConv"]


class SplitAttnConv(nn.Module):
    """Split-attention convolution (the paper's Split-Attention block, cardinal-major form).

    ``rd_channels`` of the attention bottleneck is ``max(in_chs * radix // 4, min_rd)``.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        radix: int = 2,
        rd_factor: int = 4,
        min_rd: int = 32,
    ) -> None:
        super().__init__()
        if radix < 1 or groups < 1:
            raise ValueError(f"radix and groups must be >= 1, got radix={radix}, groups={groups}")
        if out_chs % groups:
            raise ValueError(f"groups={groups} must divide out_chs={out_chs}")
        self.radix, self.groups = radix, groups
        self.conv = ConvNormAct(in_chs, out_chs * radix, kernel_size, stride, groups=groups * radix)
        rd = max(in_chs * radix // rd_factor, min_rd)
        rd = -(-rd // groups) * groups  # grouped 1x1 convs need a multiple of groups
        self.fc1 = ConvNormAct(out_chs, rd, 1, groups=groups, bias=True)
        self.fc2 = nn.Conv2d(rd, out_chs * radix, 1, groups=groups)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """Per-split channel weights, shape (B, radix, C, 1, 1); softmax over radix."""
        b = x.shape[0]
        splits = x.unflatten(1, (self.radix, -1))
        gap = splits.sum(1).mean((2, 3), keepdim=True)
        logits = self.fc2(self.fc1(gap))  # (B, radix * C, 1, 1), grouped by cardinality
        if self.radix == 1:
            return torch.sigmoid(logits).view(b, 1, -1, 1, 1)
        # channels are ordered (group, radix, c); the softmax runs across radix
        logits = logits.view(b, self.groups, self.radix, -1).transpose(1, 2)
        return logits.softmax(1).reshape(b, self.radix, -1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        splits = x.unflatten(1, (self.radix, -1))
        return (splits * self.attention(x)).sum(1)


class ResNeStBottleneck(nn.Module):
    """1x1 conv, split-attention 3x3 conv (then a 3x3 average pool when strided), 1x1 conv."""

    expansion = 4

    def __init__(
        self,
        cin: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        radix: int = 2,
        cardinality: int = 1,
        base_width: int = 64,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        width = int(planes * base_width / 64) * cardinality
        out = planes * self.expansion
        self.conv1 = ConvNormAct(cin, width, 1)
        self.conv2 = SplitAttnConv(width, width, 3, 1, cardinality, radix)
        self.avd = nn.AvgPool2d(3, stride, 1) if stride > 1 else nn.Identity()
        self.conv3 = ConvNormAct(width, out, 1, act=None)
        self.downsample = downsample
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.act = nn.ReLU(inplace=True)  # on the residual sum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv3(self.avd(self.conv2(self.conv1(x))))
        shortcut = x if self.downsample is None else self.downsample(x)  # after the branch
        return self.act(add_residual_(self.drop_path(y), shortcut))


def _avg_down(cin: int, cout: int, stride: int) -> nn.Sequential:
    pool = (
        nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)
        if stride > 1
        else nn.Identity()
    )
    return nn.Sequential(pool, ConvNormAct(cin, cout, 1, act=None))


class ResNeSt(ImageClassifier):
    """ResNet skeleton with split-attention bottlenecks, deep stem and average-pool shortcuts.

    ``stem="cifar"`` replaces the deep stem (stride 4) by its three 3x3 convolutions at
    stride 1 without the max-pool.
    """

    # base_width is the bottleneck width per 64 channels of widths, a ratio that follows widths
    width_args = ("widths", "stem_width")
    depth_args = ("layers",)

    def __init__(
        self,
        layers: tuple[int, ...] = (3, 4, 6, 3),
        widths: tuple[int, ...] = (64, 128, 256, 512),
        radix: int = 2,
        cardinality: int = 1,
        base_width: int = 64,
        stem: str = "imagenet",
        stem_width: int = 32,
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
        s = 2 if stem == "imagenet" else 1
        stem_layers: list[nn.Module] = [
            ConvNormAct(in_chans, stem_width, 3, s),
            ConvNormAct(stem_width, stem_width, 3),
            ConvNormAct(stem_width, 2 * stem_width, 3),
        ]
        if stem == "imagenet":
            stem_layers.append(nn.MaxPool2d(3, 2, 1))
        self.stem = nn.Sequential(*stem_layers)
        reduction = 4 if stem == "imagenet" else 1
        # padded strided layers map any input size onto the stages: no size constraint
        dpr = drop_path_rates(drop_path_rate, layers)
        cin, stages, self.feature_info = 2 * stem_width, [], []
        for i, (depth, planes) in enumerate(zip(layers, widths)):
            stride = 1 if i == 0 else 2
            reduction *= stride
            cout = planes * ResNeStBottleneck.expansion
            blocks = []
            for j in range(depth):
                st = stride if j == 0 else 1
                down = _avg_down(cin, cout, st) if st != 1 or cin != cout else None
                blocks.append(
                    ResNeStBottleneck(
                        cin, planes, st, down, radix, cardinality, base_width, dpr[i][j]
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
                if isinstance(m, ResNeStBottleneck):
                    nn.init.zeros_(m.conv3.norm.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.stages(self.stem(x))


_RESNEST = "ResNeSt: Split-Attention Networks"


@register_model(
    ModelCard(
        "resnest",
        _RESNEST,
        2022,
        "cnn",
        params_m=27.5,
        gmacs=5.39,
        top1=81.13,
        source="paper (ResNeSt-50 at 224px: 27.5M params, 5.39 GFLOPs, 81.13 top-1); "
        "the official release has 27,483,240 parameters",
    )
)
def resnest50(**kwargs: Any) -> ResNeSt:
    return build_model(ResNeSt, dict(layers=(3, 4, 6, 3), radix=2), kwargs)


@register_model(ModelCard("resnest", _RESNEST, 2022, "cnn", scale="cpu", img_size=32))
def resnest_pico(**kwargs: Any) -> ResNeSt:
    """One split-attention bottleneck per stage (radix 2), widths 16-128, stride-1 deep stem."""
    return build_model(
        ResNeSt,
        dict(
            layers=(1, 1, 1, 1),
            widths=(16, 32, 64, 128),
            stem_width=16,
            stem="cifar",
            img_size=32,
        ),
        kwargs,
    )
