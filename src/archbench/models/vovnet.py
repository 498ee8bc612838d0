"""VoVNet and VoVNetV2.

*An Energy and GPU-Computation Efficient Backbone Network for Real-Time Object Detection*
(VoVNet, Lee et al., 2019): One-Shot Aggregation (OSA) modules chain ``layers_per_block``
3x3 convolutions and concatenate the input with every intermediate output only once, at
the end, where a 1x1 convolution fuses them (unlike DenseNet, which concatenates at every
layer). *CenterMask: Real-Time Anchor-Free Instance Segmentation* (VoVNetV2, Lee and
Park, 2020) adds an identity shortcut to every OSA module whose input and output shapes
agree (all but the first of a stage) and effective Squeeze-Excitation (eSE): global
average pool, one full-width 1x1 convolution (no reduction), hard sigmoid gate. The
paper's text does not pin down which modules carry eSE; by default (``ese_blocks="last"``)
the last OSA module of each stage does, which gives the 24.57M / 38.61M parameters of
the public ImageNet-trained VoVNetV2-39 / -57; ``ese_blocks="all"`` puts it in every one.

Stem: 3x3/2 (64), 3x3 (64), 3x3/2 (128). Stages 2-5 have 128/160/192/224 channels inside
the OSA modules and 256/512/768/1024 outputs; stages 3-5 start with a 3x3/2 max-pool.
VoVNet-39 has 1/1/2/2 modules per stage, VoVNet-57 1/1/4/3.

``depthwise=True`` gives the depthwise-separable VoVNetV2-19-DW of CenterMask-Lite
(``ese_vovnet19b_dw``): the two later stem convolutions and every 3x3 convolution of the
OSA modules become a 3x3 depthwise convolution followed by a 1x1 convolution, BN and
ReLU; a module whose input width differs from its inner width first reduces it with a
1x1 convolution (the concatenation still takes the module's unreduced input), and the
OSA modules have three layers, one module per stage and a 64-wide stem.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..layers import DropPath, drop_path_rates
from ..layers.conv import ConvNormAct
from ..layers.helpers import init_kaiming_conv
from ._base import FeatureInfo, ImageClassifier, reject_drop_path
from ._registry import ModelCard, build_model, register_model

__all__ = ["EffectiveSE", "OsaBlock", "VoVNet"]


class EffectiveSE(nn.Module):
    """eSE (CenterMask): pooled descriptor -> one CxC 1x1 conv -> hard sigmoid -> rescale."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc(x.mean((2, 3), keepdim=True)))


class SeparableConvNormAct(nn.Sequential):
    """3x3 depthwise convolution (no bias, no norm), then 1x1 convolution, BN and ReLU."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(in_chs, in_chs, 3, stride, 1, groups=in_chs, bias=False)
        self.conv_pw = ConvNormAct(in_chs, out_chs, 1)


class OsaBlock(nn.Module):
    """One-Shot Aggregation: 3x3 conv chain, concatenate input and all outputs once, 1x1 fuse.

    With ``depthwise=True`` the chain is of depthwise-separable convolutions, after a 1x1
    reduction to ``mid_chs`` when the input is wider or narrower.
    """

    def __init__(
        self,
        in_chs: int,
        mid_chs: int,
        out_chs: int,
        layers: int,
        ese: bool,
        residual: bool,
        drop_path: float,
        depthwise: bool = False,
    ) -> None:
        super().__init__()
        if residual and in_chs != out_chs:
            raise ValueError(
                f"an identity shortcut needs in_chs == out_chs ({in_chs} != {out_chs})"
            )
        self.reduce: nn.Module = nn.Identity()
        if depthwise:
            if in_chs != mid_chs:
                self.reduce = ConvNormAct(in_chs, mid_chs, 1)
            self.convs = nn.ModuleList(
                SeparableConvNormAct(mid_chs, mid_chs) for _ in range(layers)
            )
        else:
            self.convs = nn.ModuleList(
                ConvNormAct(in_chs if i == 0 else mid_chs, mid_chs, 3) for i in range(layers)
            )
        self.concat_chs = in_chs + layers * mid_chs
        self.fuse = ConvNormAct(self.concat_chs, out_chs, 1)
        self.attn = EffectiveSE(out_chs) if ese else nn.Identity()
        self.residual = residual
        self.drop_path = DropPath(drop_path) if drop_path > 0 and residual else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        y = self.reduce(x)
        for conv in self.convs:
            y = conv(y)
            feats.append(y)
        y = self.attn(self.fuse(torch.cat(feats, 1)))
        return x + self.drop_path(y) if self.residual else y


class VoVNet(ImageClassifier):
    """VoVNet (``ese=False, residual=False``) or VoVNetV2 (both True).

    ``stem="cifar"`` uses stride-1 stem convolutions for 32x32 inputs.
    """

    width_args = ("mid_widths", "out_widths", "stem_widths")
    depth_args = ("depths", "layers_per_block")

    def __init__(
        self,
        depths: tuple[int, ...] = (1, 1, 2, 2),
        mid_widths: tuple[int, ...] = (128, 160, 192, 224),
        out_widths: tuple[int, ...] = (256, 512, 768, 1024),
        layers_per_block: int = 5,
        stem_widths: tuple[int, int, int] = (64, 64, 128),
        stem: str = "imagenet",
        ese: bool = False,
        ese_blocks: str = "last",
        residual: bool = False,
        depthwise: bool = False,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        n = len(depths)
        if n == 0 or len(mid_widths) != n or len(out_widths) != n:
            raise ValueError("depths, mid_widths and out_widths need one entry per stage")
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"unknown stem {stem!r}; choose 'imagenet' or 'cifar'")
        if ese_blocks not in ("last", "all"):
            raise ValueError(f"ese_blocks must be 'last' or 'all', got {ese_blocks!r}")
        if len(stem_widths) != 3 or layers_per_block < 1:
            raise ValueError("stem_widths needs three widths and layers_per_block >= 1")
        # only the second and later blocks of a stage add a shortcut (VoVNetV2)
        if not (residual and max(depths) > 1):
            reject_drop_path(drop_path_rate, "VoVNet", "" if residual else " (residual=False)")
        self.num_classes, self.in_chans = num_classes, in_chans
        s = 2 if stem == "imagenet" else 1
        if depthwise:
            self.stem = nn.Sequential(
                ConvNormAct(in_chans, stem_widths[0], 3, s),
                SeparableConvNormAct(stem_widths[0], stem_widths[1]),
                SeparableConvNormAct(stem_widths[1], stem_widths[2], s),
            )
        else:
            self.stem = nn.Sequential(
                ConvNormAct(in_chans, stem_widths[0], 3, s),
                ConvNormAct(stem_widths[0], stem_widths[1], 3),
                ConvNormAct(stem_widths[1], stem_widths[2], 3, s),
            )
        reduction = s * s
        dpr = drop_path_rates(drop_path_rate, depths)
        cin, stages, self.feature_info = stem_widths[2], [], []
        for i in range(n):
            layers: list[nn.Module] = []
            if i > 0:
                layers.append(nn.MaxPool2d(3, 2, ceil_mode=True))
                reduction *= 2
            for j in range(depths[i]):
                layers.append(
                    OsaBlock(
                        cin,
                        mid_widths[i],
                        out_widths[i],
                        layers_per_block,
                        ese and (ese_blocks == "all" or j == depths[i] - 1),
                        residual and j > 0,
                        dpr[i][j],
                        depthwise,
                    )  # fmt: skip
                )
                cin = out_widths[i]
            stages.append(nn.Sequential(*layers))
            self.feature_info.append(FeatureInfo(cin, reduction, f"stages.{i}"))
        # padded stem convs, then n - 1 ceil-mode 3x3/2 max-pools, each needing a map of at
        # least 2: the stem's map must be at least 2 ** (n - 1)
        self.min_input_size = s * s * (2 ** (n - 1) - 1) + 1
        self.stages = nn.Sequential(*stages)
        self.cam_target = f"stages.{n - 1}"
        self.num_features = cin
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(cin, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(init_kaiming_conv)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.stages(self.stem(x))


_VOV = "An Energy and GPU-Computation Efficient Backbone Network for Real-Time Object Detection"
_CM = "CenterMask: Real-Time Anchor-Free Instance Segmentation"
_V2: dict[str, Any] = dict(ese=True, residual=True)


@register_model(
    ModelCard(
        "vovnet",
        _VOV,
        2019,
        "cnn",
        params_m=22.60,
        source="official ImageNet release of VoVNet-39 (22.6M parameters)",
    )  # fmt: skip
)
def vovnet39(**kwargs: Any) -> VoVNet:
    return build_model(VoVNet, dict(depths=(1, 1, 2, 2)), kwargs)


@register_model(
    ModelCard(
        "vovnet",
        _VOV,
        2019,
        "cnn",
        params_m=36.64,
        source="official ImageNet release of VoVNet-57 (36.6M parameters)",
    )  # fmt: skip
)
def vovnet57(**kwargs: Any) -> VoVNet:
    return build_model(VoVNet, dict(depths=(1, 1, 4, 3)), kwargs)


@register_model(
    ModelCard(
        "vovnet",
        _CM,
        2020,
        "cnn",
        params_m=24.57,
        source="public ImageNet-trained VoVNetV2-39 (eSE on the last OSA module of each "
        "stage): 24.57M; the CenterMask paper gives no ImageNet parameter count",
    )  # fmt: skip
)
def vovnet39_v2(**kwargs: Any) -> VoVNet:
    return build_model(VoVNet, dict(depths=(1, 1, 2, 2), **_V2), kwargs)


@register_model(
    ModelCard(
        "vovnet",
        _CM,
        2020,
        "cnn",
        params_m=38.61,
        source="public ImageNet-trained VoVNetV2-57 (eSE on the last OSA module of each "
        "stage): 38.61M; the CenterMask paper gives no ImageNet parameter count",
    )  # fmt: skip
)
def vovnet57_v2(**kwargs: Any) -> VoVNet:
    return build_model(VoVNet, dict(depths=(1, 1, 4, 3), **_V2), kwargs)


@register_model(
    ModelCard(
        "vovnet",
        _CM,
        2020,
        "cnn",
        params_m=6.54,
        top1=76.83,
        source="timm's ese_vovnet19b_dw (VoVNetV2-19-DW of CenterMask-Lite, eSE on every "
        "stage's module): 6.54M parameters, top-1 of its ra_in1k weights at 224; the paper "
        "gives no ImageNet figures",
    )  # fmt: skip
)
def ese_vovnet19b_dw(**kwargs: Any) -> VoVNet:
    return build_model(
        VoVNet,
        dict(depths=(1, 1, 1, 1), layers_per_block=3, stem_widths=(64, 64, 64), depthwise=True,
             **_V2),
        kwargs,
    )  # fmt: skip


@register_model(ModelCard("vovnet", _CM, 2020, "cnn", scale="cpu", img_size=32))
def vovnet_pico(**kwargs: Any) -> VoVNet:
    """VoVNetV2 (eSE, identity shortcuts) with 3-layer OSA modules, widths 16-40 inside and
    32-128 out, 1/1/2/1 modules, stride-1 stem."""
    return build_model(
        VoVNet,
        dict(
            depths=(1, 1, 2, 1),
            mid_widths=(16, 24, 32, 40),
            out_widths=(32, 64, 96, 128),
            layers_per_block=3,
            stem_widths=(16, 16, 32),
            stem="cifar",
            img_size=32,
            **_V2,
        ),  # fmt: skip
        kwargs,
    )
