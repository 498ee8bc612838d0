"""ResNet-RS.

*Revisiting ResNets: Improved Training and Scaling Strategies* (Bello et al., 2021).
The architecture is ResNet with the ResNet-D changes and squeeze-and-excitation:

- stem: three 3x3 convolutions (32, 32, 64 channels, the first with stride 2), and the
  stem's max-pool replaced by a 3x3 stride-2 convolution, as in the official release;
- strided blocks put the stride on the 3x3 convolution, and projection shortcuts are a
  2x2 average pool followed by a 1x1 convolution (ResNet-D);
- SE in every bottleneck with a ratio of 0.25 (of the block's expanded output width);
- the paper's depth scaling: ResNet-RS-50 / -101 use 3-4-6-3 / 3-4-23-3 bottlenecks at
  ResNet widths, trained at 160x160. Dropout on the head (0.25 for RS-50 / -101 at 160)
  and stochastic depth are training options (``drop_rate``, ``drop_path_rate``).

The bottleneck is written here (1x1, 3x3 with the stride, 1x1, SE, residual) rather
than taken from ``resnet.py`` so that this family does not follow changes to the ResNet
block's plug-in options.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..layers import DropPath, SqueezeExcite, drop_path_rates
from ..layers.conv import ConvNormAct
from ..layers.helpers import add_residual_, init_kaiming_conv
from ._base import FeatureInfo, ImageClassifier
from ._registry import ModelCard, build_model, register_model

__all__ = ["ResNetRS", "SEBottleneck"]


class SEBottleneck(nn.Module):
    """ResNet bottleneck (stride on the 3x3) with SE on the expanded output."""

    expansion = 4

    def __init__(
        self,
        cin: int,
        planes: int,
        stride: int,
        downsample: nn.Module | None,
        se_ratio: float,
        drop_path: float,
    ) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = ConvNormAct(cin, planes, 1)
        self.conv2 = ConvNormAct(planes, planes, 3, stride)
        self.conv3 = ConvNormAct(planes, out, 1, act=None)
        self.se = SqueezeExcite(out, rd_ratio=se_ratio) if se_ratio > 0 else nn.Identity()
        self.downsample = downsample
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.act = nn.ReLU(inplace=True)  # on the residual sum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.se(self.conv3(self.conv2(self.conv1(x))))
        shortcut = x if self.downsample is None else self.downsample(x)  # after the branch
        return self.act(add_residual_(self.drop_path(y), shortcut))


def _avg_down(cin: int, cout: int, stride: int) -> nn.Sequential:
    pool = (
        nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False)
        if stride > 1
        else nn.Identity()
    )
    return nn.Sequential(pool, ConvNormAct(cin, cout, 1, act=None))


class ResNetRS(ImageClassifier):
    """ResNet-D with SE bottlenecks and a convolutional stem downsample.

    ``stem="cifar"`` keeps the three 3x3 stem convolutions at stride 1 and drops the
    stride-2 replacement of the max-pool, for 32x32 inputs.
    """

    width_args = ("widths", "stem_width")
    depth_args = ("layers",)

    def __init__(
        self,
        layers: tuple[int, ...] = (3, 4, 6, 3),
        widths: tuple[int, ...] = (64, 128, 256, 512),
        stem_width: int = 32,
        stem: str = "imagenet",
        se_ratio: float = 0.25,
        zero_init_last: bool = True,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 160,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if len(layers) != len(widths) or not layers:
            raise ValueError(f"layers {layers} and widths {widths} must be non-empty and match")
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"unknown stem {stem!r}; choose 'imagenet' or 'cifar'")
        if not 0.0 <= se_ratio <= 1.0:
            raise ValueError(f"se_ratio must be in [0, 1], got {se_ratio}")
        self.num_classes, self.in_chans = num_classes, in_chans
        s = 2 if stem == "imagenet" else 1
        w = stem_width
        stem_layers: list[nn.Module] = [
            ConvNormAct(in_chans, w, 3, s),
            ConvNormAct(w, w, 3),
            ConvNormAct(w, 2 * w, 3),
        ]
        if stem == "imagenet":
            stem_layers.append(ConvNormAct(2 * w, 2 * w, 3, 2))  # replaces the max-pool
        self.stem = nn.Sequential(*stem_layers)
        reduction = s * s
        dpr = drop_path_rates(drop_path_rate, layers)
        cin, stages, self.feature_info = 2 * w, [], []
        for i, (depth, planes) in enumerate(zip(layers, widths)):
            stride = 1 if i == 0 else 2
            reduction *= stride
            cout = planes * SEBottleneck.expansion
            blocks = []
            for j in range(depth):
                st = stride if j == 0 else 1
                down = _avg_down(cin, cout, st) if st != 1 or cin != cout else None
                blocks.append(SEBottleneck(cin, planes, st, down, se_ratio, dpr[i][j]))
                cin = cout
            stages.append(nn.Sequential(*blocks))
            self.feature_info.append(FeatureInfo(cout, reduction, f"stages.{i}"))
        # padded strided layers map any input size onto the stages: no size constraint
        self.stages = nn.Sequential(*stages)
        self.cam_target = f"stages.{len(stages) - 1}"
        self.num_features = cin
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(cin, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(init_kaiming_conv)
        if zero_init_last:
            for m in self.modules():
                if isinstance(m, SEBottleneck):
                    nn.init.zeros_(m.conv3.norm.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.stages(self.stem(x))


_RS = "Revisiting ResNets: Improved Training and Scaling Strategies"


@register_model(
    ModelCard(
        "resnet_rs",
        _RS,
        2021,
        "cnn",
        params_m=35.7,
        top1=78.8,
        img_size=160,
        source="paper (ResNet-RS-50: 35.7M params) and the official "
        "release (78.8 top-1 at 160x160)",
    )  # fmt: skip
)
def resnetrs50(**kwargs: Any) -> ResNetRS:
    return build_model(ResNetRS, dict(layers=(3, 4, 6, 3)), kwargs)


@register_model(
    ModelCard(
        "resnet_rs",
        _RS,
        2021,
        "cnn",
        params_m=63.6,
        top1=80.3,
        img_size=160,
        source="paper (ResNet-RS-101: 63.6M params) and the official release "
        "(80.3 top-1 at 160x160)",
    )  # fmt: skip
)
def resnetrs101(**kwargs: Any) -> ResNetRS:
    return build_model(ResNetRS, dict(layers=(3, 4, 23, 3)), kwargs)


@register_model(ModelCard("resnet_rs", _RS, 2021, "cnn", scale="cpu", img_size=32))
def resnet_rs_pico(**kwargs: Any) -> ResNetRS:
    """One SE bottleneck per stage, widths 16-128 (x4 out), stride-1 three-conv stem."""
    return build_model(
        ResNetRS,
        dict(
            layers=(1, 1, 1, 1),
            widths=(16, 32, 64, 128),
            stem_width=16,
            stem="cifar",
            img_size=32,
        ),  # fmt: skip
        kwargs,
    )
