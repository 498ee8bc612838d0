"""KAN convolutional backbones: VGG-like and ResNet-like.

*Kolmogorov-Arnold Convolutions: Design Principles and Empirical Studies* (Drokin, 2024)
builds VGG-like networks (the ImageNet "VGG KAGN 11v2": KAN convolutions of widths
32-64-128-128-256x6 with Gram polynomials of degree 5, max-pooling between stages,
global average pooling, a linear classifier) and ResNet-like ResKANets (basic blocks whose
3x3 convolutions are KAN convolutions). Every KAN convolution is followed by a norm and
SiLU, as in the paper's layers. ``block="bottleneck"`` swaps in the paper's
parameter-efficient bottleneck KAN convolution.

Deviations: the paper's layers use instance norm in the VGG and batch norm in the
ResKANets; here ``norm`` picks either for both. No canonical (ImageNet-size) parameter
count is registered: the VGG-KAGN-11v2 layout is available as ``vgg_kagn11`` at
``scale="other"`` because its published parameter count could not be verified.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..layers import DropPath, drop_path_rates
from ..layers.kan import BottleneckKANConv2d, KANConv2d
from ._base import FeatureInfo, ImageClassifier, min_side_for_norms, reject_drop_path
from ._registry import ModelCard, build_model, register_model

__all__ = ["KANResNet", "KANVGG"]

_NORMS = {"batch": nn.BatchNorm2d, "instance": lambda c: nn.InstanceNorm2d(c, affine=True)}
_BLOCKS = ("kan", "bottleneck")


def _check(block: str, norm: str) -> None:
    if block not in _BLOCKS:
        raise ValueError(f"block must be one of {_BLOCKS}, got {block!r}")
    if norm not in _NORMS:
        raise ValueError(f"norm must be one of {sorted(_NORMS)}, got {norm!r}")


def kan_conv_norm_act(
    cin: int,
    cout: int,
    k: int,
    stride: int,
    block: str,
    basis: str,
    basis_opts: dict[str, Any],
    norm: str,
    act: bool = True,
) -> nn.Module:
    """KAN convolution + norm (+ SiLU), or the bottleneck KAN convolution (which has both)."""
    if block == "bottleneck" and k > 1:
        return BottleneckKANConv2d(
            cin, cout, k, stride, k // 2, basis=basis, norm=norm, **basis_opts
        )
    layers: list[nn.Module] = [
        KANConv2d(cin, cout, k, stride, k // 2, basis=basis, **basis_opts),
        _NORMS[norm](cout),
    ]
    if act:
        layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class KANVGG(ImageClassifier):
    """VGG-like KAN network: stages of KAN convolutions with 2x2 max-pooling between them."""

    # the widths matched-budget comparisons scale (nested: one tuple of widths per stage)
    width_args = ("stages",)
    # no separate depth argument: the number of widths in each entry of stages is the depth
    depth_args = ()

    def __init__(
        self,
        stages: tuple[tuple[int, ...], ...] = (
            (32,),
            (64,),
            (128, 128),
            (256, 256),
            (256, 256),
            (256, 256),
        ),
        block: str = "kan",
        basis: str = "gram",
        basis_opts: dict[str, Any] | None = None,
        norm: str = "batch",
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        _check(block, norm)
        if not stages or any(not s for s in stages):
            raise ValueError(f"stages must be non-empty tuples of widths, got {stages}")
        reject_drop_path(drop_path_rate, "KANVGG")
        opts = dict(basis_opts if basis_opts is not None else {"degree": 5})
        self.num_classes, self.in_chans = num_classes, in_chans
        self.feature_info = []
        cin, reduction = in_chans, 1
        for i, widths in enumerate(stages):
            layers: list[nn.Module] = [nn.MaxPool2d(2)] if i > 0 else []
            reduction *= 2 if i > 0 else 1
            for w in widths:
                layers.append(kan_conv_norm_act(cin, w, 3, 1, block, basis, opts, norm))
                cin = w
            self.add_module(f"stage{i + 1}", nn.Sequential(*layers))
            self.feature_info.append(FeatureInfo(cin, reduction, f"stage{i + 1}"))
        self.num_stages = len(stages)
        # 2x2 max-pools drop odd remainders: any size that reaches the last stage works;
        # instance norms need a last map of at least 2 x 2
        self.min_input_size = 2 ** (len(stages) - 1) * (2 if norm == "instance" else 1)
        self.num_features = cin
        self.cam_target = f"stage{self.num_stages}"
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(cin, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        for i in range(self.num_stages):
            x = getattr(self, f"stage{i + 1}")(x)
        return x


class KANBasicBlock(nn.Module):
    """ResKANet basic block: two 3x3 KAN convolutions, a 1x1 KAN projection shortcut."""

    def __init__(
        self,
        cin: int,
        cout: int,
        stride: int,
        block: str,
        basis: str,
        basis_opts: dict[str, Any],
        norm: str,
        drop_path: float,
    ) -> None:
        super().__init__()
        self.conv1 = kan_conv_norm_act(cin, cout, 3, stride, block, basis, basis_opts, norm)
        self.conv2 = kan_conv_norm_act(cout, cout, 3, 1, block, basis, basis_opts, norm, act=False)
        self.downsample = (
            kan_conv_norm_act(cin, cout, 1, stride, "kan", basis, basis_opts, norm, act=False)
            if stride != 1 or cin != cout
            else nn.Identity()
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop_path(self.conv2(self.conv1(x))) + self.downsample(x))


class KANResNet(ImageClassifier):
    """ResNet-like KAN network (ResKANet): KAN stem, stages of KAN basic blocks, GAP, linear."""

    width_args = ("widths", "stem_width")
    depth_args = ("layers",)

    def __init__(
        self,
        layers: tuple[int, ...] = (2, 2, 2, 2),
        widths: tuple[int, ...] = (64, 128, 256, 512),
        stem: str = "imagenet",
        stem_width: int = 64,
        block: str = "kan",
        basis: str = "legendre",
        basis_opts: dict[str, Any] | None = None,
        norm: str = "batch",
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        _check(block, norm)
        if len(layers) != len(widths):
            raise ValueError(f"layers {layers} and widths {widths} must have the same length")
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
        opts = dict(basis_opts if basis_opts is not None else {"degree": 3})
        self.num_classes, self.in_chans = num_classes, in_chans
        if stem == "imagenet":
            self.stem = nn.Sequential(
                kan_conv_norm_act(in_chans, stem_width, 7, 2, "kan", basis, opts, norm),
                nn.MaxPool2d(3, 2, 1),
            )
            reduction = 4
        else:
            self.stem = kan_conv_norm_act(in_chans, stem_width, 3, 1, "kan", basis, opts, norm)
            reduction = 1
        dprs = drop_path_rates(drop_path_rate, layers)
        cin = stem_width
        self.feature_info = []
        for i, (depth, width) in enumerate(zip(layers, widths)):
            stride = 1 if i == 0 else 2
            reduction *= stride
            blocks = [
                KANBasicBlock(
                    cin if j == 0 else width,
                    width,
                    stride if j == 0 else 1,
                    block,
                    basis,
                    opts,
                    norm,
                    dprs[i][j],
                )
                for j in range(depth)
            ]
            cin = width
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.feature_info.append(FeatureInfo(width, reduction, f"layer{i + 1}"))
        self.num_stages = len(layers)
        # padded strided layers map any size onto the stages; instance norms need a map of
        # more than one value
        self.min_input_size = min_side_for_norms(
            [(getattr(self, f.module), f.reduction) for f in self.feature_info]
        )
        self.num_features = cin
        self.cam_target = f"layer{self.num_stages}"
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(cin, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.stem(x)
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return x


_PAPER = "Kolmogorov-Arnold Convolutions: Design Principles and Empirical Studies"


@register_model(
    ModelCard(
        "kan_vgg",
        _PAPER,
        2024,
        "kan",
        scale="other",
        top1=59.1,
        source="torch-conv-kan release, VGG KAGN 11v2 report (ImageNet-1k top-1 59.1)",
        notes="Layout of VGG KAGN 11v2 (Gram, degree 5); params not verified against the paper",
    )
)
def vgg_kagn11(**kwargs: Any) -> KANVGG:
    return build_model(KANVGG, dict(norm="instance"), kwargs)


@register_model(ModelCard("kan_vgg", _PAPER, 2024, "kan", scale="cpu", img_size=32))
def kan_convnet_pico(**kwargs: Any) -> KANVGG:
    """Three stages of one Gram-KAN convolution (widths 16-32-64, degree 3)."""
    return build_model(
        KANVGG,
        dict(stages=((16,), (32,), (64,)), basis_opts={"degree": 3}, img_size=32),
        kwargs,
    )


@register_model(ModelCard("kan_vgg", _PAPER, 2024, "kan", scale="cpu", img_size=32))
def kan_convnet_bottleneck_pico(**kwargs: Any) -> KANVGG:
    """The pico VGG with the bottleneck KAN convolution (wider at a similar budget)."""
    return build_model(
        KANVGG,
        dict(
            stages=((32,), (64,), (128,)),
            block="bottleneck",
            basis_opts={"degree": 3},
            img_size=32,
        ),
        kwargs,
    )


@register_model(ModelCard("kan_resnet", _PAPER, 2024, "kan", scale="other"))
def reskanet18(**kwargs: Any) -> KANResNet:
    """ResKANet-18 layout (Legendre KAN convolutions) with the ImageNet stem."""
    return build_model(KANResNet, dict(layers=(2, 2, 2, 2)), kwargs)


@register_model(ModelCard("kan_resnet", _PAPER, 2024, "kan", scale="cpu", img_size=32))
def kan_resnet_pico(**kwargs: Any) -> KANResNet:
    """Three stages of one KAN basic block, widths 16-32-64, CIFAR stem."""
    return build_model(
        KANResNet,
        dict(layers=(1, 1, 1), widths=(16, 32, 64), stem="cifar", stem_width=16, img_size=32),
        kwargs,
    )
