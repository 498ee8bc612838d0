"""AFFNet: MobileNetV2 stages and AFF blocks (*Adaptive Frequency Filters As Efficient
Global Token Mixers*, Huang et al., ICCV 2023).

Layout of the official release (a MobileViT-style hybrid): a 3x3/2 conv stem, two stages
of MobileNetV2 inverted residuals, then three stages that each downsample with an
inverted residual and apply an AFF block: ``n`` blocks of [GroupNorm(1) -> inverted
residual (expansion ffn_dim / dim) -> GroupNorm(1) -> AFF token mixer
(``archbench.layers.freq_mixers.AdaptiveFrequencyFilter``, 8 channel groups, its spectral
MLP using the model's activation as the release's does) ->
residual], a final GroupNorm(1), a 1x1 conv-BN projection, and (except where the release
turns it off) a 1x1 conv-BN-act fusion of the block input with its output. A 1x1 conv
expands to ``min(4 C, 960)`` channels before average pooling and the linear classifier.
Convs are bias-free and followed by BatchNorm; activations are SiLU (parameter-free, so
counts do not depend on the choice).

CPU variants use a stride-1 stem so that 32x32 inputs give 16, 8, 4, 2 grids in the four
strided stages.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..layers import DropPath, drop_path_rates, make_divisible
from ..layers.freq_mixers import AdaptiveFrequencyFilter
from ..layers.norm import GroupNorm1
from ._base import FeatureInfo, ImageClassifier
from ._registry import ModelCard, build_model, register_model

__all__ = ["AFFNet", "InvertedResidual"]


def _conv_bn_act(
    cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, act: bool = True
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 project; residual when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = make_divisible(int(round(cin * expand_ratio)), 8)
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_bn_act(cin, hidden))
        layers += [
            _conv_bn_act(hidden, hidden, 3, stride, groups=hidden),
            _conv_bn_act(hidden, cout, act=False),
        ]
        self.block = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_res else self.block(x)


class _AFFLayer(nn.Module):
    def __init__(self, dim: int, ffn_dim: int, drop_path: float) -> None:
        super().__init__()
        self.norm1 = GroupNorm1(dim)
        self.mlp = InvertedResidual(dim, dim, 1, ffn_dim / dim)
        self.norm2 = GroupNorm1(dim)
        self.token_mixer = AdaptiveFrequencyFilter(dim, num_groups=8, act="silu")
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.token_mixer(self.norm2(self.mlp(self.norm1(x))))
        return x + self.drop_path(y)


class AFFBlock(nn.Module):
    def __init__(self, dim: int, ffn_dim: int, depth: int, fuse: bool, dprs: list[float]) -> None:
        super().__init__()
        self.layers = nn.Sequential(*(_AFFLayer(dim, ffn_dim, p) for p in dprs[:depth]))
        self.norm = GroupNorm1(dim)
        self.proj = _conv_bn_act(dim, dim, act=False)
        self.fusion = _conv_bn_act(2 * dim, dim) if fuse else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj(self.norm(self.layers(x)))
        return self.fusion(torch.cat((x, y), dim=1)) if self.fusion is not None else y


class AFFNet(ImageClassifier):
    width_args = ("mv2_channels", "dims", "stem_width")
    depth_args = ("mv2_depths", "depths")

    def __init__(
        self,
        mv2_channels: tuple[int, int] = (32, 64),
        mv2_depths: tuple[int, int] = (1, 3),
        dims: tuple[int, ...] = (128, 256, 320),
        depths: tuple[int, ...] = (2, 4, 3),
        fuse: tuple[bool, ...] = (True, True, True),
        expand_ratio: float = 4.0,
        ffn_ratio: float = 2.0,
        stem_width: int = 16,
        stem_stride: int = 2,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 256,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if not (len(dims) == len(depths) == len(fuse)):
            raise ValueError("dims, depths and fuse must have the same length")
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride}")
        self.num_classes, self.in_chans = num_classes, in_chans
        self.stem = _conv_bn_act(in_chans, stem_width, 3, stem_stride)
        self.stages = nn.ModuleList()
        self.feature_info = []
        cin, reduction = stem_width, stem_stride
        for i, (cout, depth) in enumerate(zip(mv2_channels, mv2_depths)):
            stride = 1 if i == 0 else 2
            blocks = [
                InvertedResidual(
                    cin if j == 0 else cout, cout, stride if j == 0 else 1, expand_ratio
                )
                for j in range(depth)
            ]
            self.stages.append(nn.Sequential(*blocks))
            reduction *= stride
            self.feature_info.append(FeatureInfo(cout, reduction, f"stages.{i}"))
            cin = cout
        dprs = drop_path_rates(drop_path_rate, depths)
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            stage = nn.Sequential(
                InvertedResidual(cin, dim, 2, expand_ratio),
                AFFBlock(dim, int(ffn_ratio * dim), depth, fuse[i], dprs[i]),
            )
            self.stages.append(stage)
            reduction *= 2
            self.feature_info.append(FeatureInfo(dim, reduction, f"stages.{len(self.stages) - 1}"))
            cin = dim
        # padded strided layers map any input size onto the stages: no size constraint
        self.num_features = min(4 * cin, 960)
        self.conv_exp = _conv_bn_act(cin, self.num_features)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.cam_target = f"stages.{len(self.stages) - 1}"

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.conv_exp(x)


_PAPER = "Adaptive Frequency Filters As Efficient Global Token Mixers"
_SRC = "microsoft/TokenMixers AFFNet README (256px); layer tables from its config/affnet.py"


# Built from the release's layer tables these count 1.436M, 2.654M and 5.569M against the
# README's 1.4M, 2.6M and 5.5M: each README figure is ours truncated to one decimal, but
# the gap exceeds 0.5%, so the variants are registered as "other" rather than canonical.
def _card(params: float, gmacs: float, top1: float, ours: float) -> ModelCard:
    return ModelCard(
        "affnet",
        _PAPER,
        2023,
        "hybrid",
        scale="other",
        params_m=params,
        gmacs=gmacs,
        top1=top1,
        img_size=256,
        source=_SRC,
        notes=f"README {params}M; this layout counts {ours}M",
    )


@register_model(_card(1.4, 0.4, 73.0, 1.436))
def affnet_et(**kwargs: Any) -> AFFNet:
    cfg = dict(mv2_channels=(32, 48), dims=(64, 104, 144), expand_ratio=2.0)
    return build_model(AFFNet, cfg, kwargs)


@register_model(_card(2.6, 0.8, 77.0, 2.654))
def affnet_t(**kwargs: Any) -> AFFNet:
    cfg = dict(mv2_channels=(32, 48), dims=(96, 160, 192))
    return build_model(AFFNet, cfg, kwargs)


@register_model(_card(5.5, 1.5, 79.8, 5.569))
def affnet(**kwargs: Any) -> AFFNet:
    return build_model(AFFNet, dict(mv2_channels=(32, 64), dims=(128, 256, 320)), kwargs)


@register_model(
    ModelCard(
        "affnet",
        _PAPER,
        2023,
        "hybrid",
        scale="cpu",
        img_size=32,
        notes="stride-1 stem: 32, 16, 8, 4, 2 grids",
    )
)
def affnet_pico(**kwargs: Any) -> AFFNet:
    cfg = dict(
        mv2_channels=(16, 24),
        mv2_depths=(1, 1),
        dims=(32, 48, 64),
        depths=(1, 1, 1),
        expand_ratio=2.0,
        stem_stride=1,
        img_size=32,
    )
    return build_model(AFFNet, cfg, kwargs)
