"""Cross Stage Partial networks: CSPResNet-50 and CSPDarkNet-53.

*CSPNet: A New Backbone that can Enhance Learning Capability of CNN* (Wang et al., 2020).
Each stage (after an optional strided 3x3 convolution) splits its feature map into two
parts: one part goes through the stage's residual blocks and a 1x1 transition, the
other crosses the stage untouched; the two are concatenated and fused by a second 1x1
transition ("fusion last" after a partial transition, the paper's Figure 3). The
gradient flowing through the blocks is thus not duplicated into the crossing part.

The split is made by one 1x1 convolution whose output is cut in half, which is the same
function (and the same parameters) as the release's two 1x1 convolutions, one per part.

- CSPResNet-50: ResNet-50 stem (7x7/2 conv, 3x3/2 max-pool), stages of ResNet
  bottlenecks with 128/256/512/1024 output channels and 3/3/5/2 blocks; the split
  convolution doubles the width and is linear, as in the release.
- CSPDarkNet-53: a 3x3 stem and five strided stages of Darknet residual blocks
  (1x1 then 3x3 convolution) with 1/2/8/8/4 blocks; the first stage keeps full-width
  blocks with a half-width bottleneck.
Both use leaky ReLU with slope 0.1: the release's Darknet configuration files give every
convolution ``activation=leaky``, which Darknet computes as ``max(x, 0.1 x)`` (the
paper does not state the slope; timm's port uses PyTorch's default 0.01 instead).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..layers import DropPath, create_act, drop_path_rates
from ..layers.conv import ConvNormAct
from ._base import FeatureInfo, ImageClassifier
from ._registry import ModelCard, build_model, register_model

__all__ = ["CSPNet", "CrossStage"]


class ResBottleneck(nn.Module):
    """ResNet bottleneck (1x1, 3x3, 1x1) with identity shortcut, activation after the sum."""

    def __init__(self, chs: int, bottle_ratio: float, act: str, drop_path: float) -> None:
        super().__init__()
        mid = int(round(chs * bottle_ratio))
        self.conv1 = ConvNormAct(chs, mid, 1, act=act)
        self.conv2 = ConvNormAct(mid, mid, 3, act=act)
        self.conv3 = ConvNormAct(mid, chs, 1, act=None)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.act = create_act(act, inplace=True)  # on the fresh residual sum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.drop_path(self.conv3(self.conv2(self.conv1(x)))))


class DarkBlock(nn.Module):
    """Darknet residual block: 1x1 conv to a bottleneck, 3x3 conv back, identity sum."""

    def __init__(self, chs: int, bottle_ratio: float, act: str, drop_path: float) -> None:
        super().__init__()
        mid = int(round(chs * bottle_ratio))
        self.conv1 = ConvNormAct(chs, mid, 1, act=act)
        self.conv2 = ConvNormAct(mid, chs, 3, act=act)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.conv2(self.conv1(x)))


BLOCKS = {"bottleneck": ResBottleneck, "dark": DarkBlock}


class CrossStage(nn.Module):
    """One CSP stage: downsample, split in two, blocks on one part, partial transition, fuse."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int,
        depth: int,
        block: str,
        expand_ratio: float,
        bottle_ratio: float,
        block_ratio: float,
        down_growth: bool,
        cross_linear: bool,
        act: str,
        drop_paths: list[float],
    ) -> None:
        super().__init__()
        if block not in BLOCKS:
            raise ValueError(f"unknown block {block!r}; choose one of {sorted(BLOCKS)}")
        if stride > 1:
            down_chs = out_chs if down_growth else in_chs
            self.conv_down: nn.Module = ConvNormAct(in_chs, down_chs, 3, stride, act=act)
        else:
            down_chs = in_chs
            self.conv_down = nn.Identity()
        exp_chs = int(round(out_chs * expand_ratio))
        if exp_chs % 2:
            raise ValueError(f"the split width {exp_chs} must be even")
        self.half = exp_chs // 2
        block_chs = int(round(out_chs * block_ratio))
        if block_chs != self.half:
            raise ValueError(
                f"blocks of width {block_chs} cannot take the {self.half}-wide split; "
                "adjust expand_ratio / block_ratio"
            )
        self.conv_split = ConvNormAct(down_chs, exp_chs, 1, act=None if cross_linear else act)
        self.blocks = nn.Sequential(
            *[BLOCKS[block](block_chs, bottle_ratio, act, dp) for dp in drop_paths[:depth]]
        )
        self.transition_part = ConvNormAct(block_chs, self.half, 1, act=act)
        self.transition_fuse = ConvNormAct(exp_chs, out_chs, 1, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_split(self.conv_down(x))
        cross, part = x.split(self.half, 1)
        part = self.transition_part(self.blocks(part))
        return self.transition_fuse(torch.cat([cross, part], 1))


def _per_stage(v: Any, n: int, name: str) -> tuple:
    t = tuple(v) if isinstance(v, (tuple, list)) else (v,) * n
    if len(t) != n:
        raise ValueError(f"{name} needs one value per stage ({n}), got {v}")
    return t


class CSPNet(ImageClassifier):
    """A stem followed by cross stage partial stages, global average pool, linear head.

    ``stem``: "resnet" (7x7/2 conv + 3x3/2 max-pool), "darknet" (3x3/1 conv) or
    "cifar" (3x3/1 conv, for 32x32 inputs). Per-stage options take a value or a tuple.
    """

    width_args = ("widths", "stem_width")
    depth_args = ("depths",)

    def __init__(
        self,
        depths: tuple[int, ...] = (3, 3, 5, 2),
        widths: tuple[int, ...] = (128, 256, 512, 1024),
        strides: tuple[int, ...] = (1, 2, 2, 2),
        block: str = "bottleneck",
        expand_ratio: float | tuple[float, ...] = 2.0,
        bottle_ratio: float | tuple[float, ...] = 0.5,
        block_ratio: float | tuple[float, ...] = 1.0,
        down_growth: bool = False,
        cross_linear: bool = True,
        stem: str = "resnet",
        stem_width: int = 64,
        act: str = "leaky_relu",
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        n = len(depths)
        if n == 0 or len(widths) != n:
            raise ValueError(f"depths {depths} and widths {widths} must be non-empty and match")
        strides = _per_stage(strides, n, "strides")
        exp = _per_stage(expand_ratio, n, "expand_ratio")
        bot = _per_stage(bottle_ratio, n, "bottle_ratio")
        blk = _per_stage(block_ratio, n, "block_ratio")
        self.num_classes, self.in_chans = num_classes, in_chans
        if stem == "resnet":
            self.stem = nn.Sequential(
                ConvNormAct(in_chans, stem_width, 7, 2, act=act), nn.MaxPool2d(3, 2, 1)
            )
            reduction = 4
        elif stem in ("darknet", "cifar"):
            self.stem = ConvNormAct(in_chans, stem_width, 3, act=act)
            reduction = 1
        else:
            raise ValueError(f"unknown stem {stem!r}; choose 'resnet', 'darknet' or 'cifar'")
        dpr = drop_path_rates(drop_path_rate, depths)
        cin, stages, self.feature_info = stem_width, [], []
        for i in range(n):
            reduction *= strides[i]
            stages.append(
                CrossStage(
                    cin,
                    widths[i],
                    strides[i],
                    depths[i],
                    block,
                    exp[i],
                    bot[i],
                    blk[i],
                    down_growth,
                    cross_linear,
                    act,
                    dpr[i],
                )  # fmt: skip
            )
            cin = widths[i]
            self.feature_info.append(FeatureInfo(cin, reduction, f"stages.{i}"))
        # padded strided layers map any input size onto the stages: no size constraint
        self.stages = nn.Sequential(*stages)
        self.cam_target = f"stages.{n - 1}"
        self.num_features = cin
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(cin, num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m.weight.device.type != "meta":
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.stages(self.stem(x))


_CSP = "CSPNet: A New Backbone that can Enhance Learning Capability of CNN"
_DARKNET: dict[str, Any] = dict(
    depths=(1, 2, 8, 8, 4),
    widths=(64, 128, 256, 512, 1024),
    strides=(2, 2, 2, 2, 2),
    block="dark",
    expand_ratio=(2.0, 1.0, 1.0, 1.0, 1.0),
    bottle_ratio=(0.5, 1.0, 1.0, 1.0, 1.0),
    block_ratio=(1.0, 0.5, 0.5, 0.5, 0.5),
    down_growth=True,
    cross_linear=False,
    stem="darknet",
    stem_width=32,
)


@register_model(
    ModelCard(
        "cspnet",
        _CSP,
        2020,
        "cnn",
        params_m=21.57,
        top1=76.6,
        img_size=256,
        source="official release README (CSPResNet-50: 21.57M, 8.97 BFLOPs at 256px, 76.6 top-1)",
    )
)
def cspresnet50(**kwargs: Any) -> CSPNet:
    return build_model(CSPNet, dict(img_size=256), kwargs)


@register_model(
    ModelCard(
        "cspnet",
        _CSP,
        2020,
        "cnn",
        params_m=27.61,
        top1=77.2,
        img_size=256,
        source="official release README (CSPDarkNet-53: 27.61M, 13.07 BFLOPs at 256px, 77.2 top-1)",
    )
)
def cspdarknet53(**kwargs: Any) -> CSPNet:
    return build_model(CSPNet, dict(_DARKNET, img_size=256), kwargs)


@register_model(ModelCard("cspnet", _CSP, 2020, "cnn", scale="cpu", img_size=32))
def cspnet_pico(**kwargs: Any) -> CSPNet:
    """CSPResNet layout, one bottleneck per stage, widths 32-256, CIFAR stem."""
    return build_model(
        CSPNet,
        dict(
            depths=(1, 1, 1, 1),
            widths=(32, 64, 128, 256),
            stem="cifar",
            stem_width=16,
            img_size=32,
        ),
        kwargs,
    )


@register_model(ModelCard("cspnet", _CSP, 2020, "cnn", scale="cpu", img_size=32))
def cspdarknet_pico(**kwargs: Any) -> CSPNet:
    """CSPDarkNet layout, one Darknet block per stage, widths 32-256, strides 1-2-2-2."""
    return build_model(
        CSPNet,
        dict(
            _DARKNET,
            depths=(1, 1, 1, 1),
            widths=(32, 64, 128, 256),
            strides=(1, 2, 2, 2),
            expand_ratio=(2.0, 1.0, 1.0, 1.0),
            bottle_ratio=(0.5, 1.0, 1.0, 1.0),
            block_ratio=(1.0, 0.5, 0.5, 0.5),
            stem="cifar",
            stem_width=16,
            img_size=32,
        ),
        kwargs,
    )
