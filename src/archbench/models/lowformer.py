"""LowFormer (*LowFormer: Hardware Efficient Design for Convolutional Transformer
Backbones*, 2025).

Layout (official release altair199797/LowFormer, ``lowformer_model.py``): a 3x3/2
conv stem, two stages of fused MBConv blocks, two attention stages (each opened by a
stride-2 fused MBConv), and a wide classification head (1x1 conv -> pool -> linear +
LayerNorm -> linear). In archbench the 1x1 conv closes ``forward_features`` (its width is
``num_features``) and the two linear layers form ``head``. Activations are Hardswish.

Each attention-stage block is: GroupNorm(1) + *lowtention*, residual; GroupNorm(1) +
1x1-conv MLP (x4), residual; a fused (or, at 256+ channels, plain) MBConv, residual.
Lowtention is the paper's slimmed multi-head self-attention: the map is first
down-sampled by a depthwise kxk convolution with BatchNorm (stride 2 in the first
attention stage, 1 in the last), a single 1x1 convolution produces Q, K and V with half
the channel width (heads of 32 channels, about one head per 60 input channels),
attention runs at the low resolution, and a transposed convolution both projects back
to the full width and up-samples to the input size. The attention itself is
softmax(QK^T/sqrt(d))V and uses SDPA.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import DropPath
from ._base import FeatureInfo, ImageClassifier
from ._registry import ModelCard, build_model, register_model

__all__ = ["LowFormer", "Lowtention"]


def _conv(
    cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, bias: bool = False,
    bn: bool = True, act: bool = True,
) -> nn.Sequential:  # fmt: skip
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=bias)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    if act:
        layers.append(nn.Hardswish())
    return nn.Sequential(*layers)


class FusedMBConv(nn.Sequential):
    """kxk conv (expand) + BN + Hardswish, then 1x1 conv + BN (project)."""

    def __init__(
        self, cin: int, cout: int, stride: int, expand: float, first_bias: bool = False
    ) -> None:
        mid = round(cin * expand)
        super().__init__(
            _conv(cin, mid, 3, stride, bias=first_bias), _conv(mid, cout, 1, act=False)
        )


class MBConv(nn.Sequential):
    """1x1 expand (bias, Hardswish) -> 3x3 depthwise (bias, Hardswish) -> 1x1 project + BN."""

    def __init__(self, channels: int, expand: float) -> None:
        mid = round(channels * expand)
        super().__init__(
            _conv(channels, mid, 1, bias=True, bn=False),
            _conv(mid, mid, 3, groups=mid, bias=True, bn=False),
            _conv(mid, channels, 1, act=False),
        )


class Residual(nn.Module):
    def __init__(self, body: nn.Module, drop_path: float = 0.0) -> None:
        super().__init__()
        self.body = body
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.body(x))


class Lowtention(nn.Module):
    """Down-sampled multi-head self-attention with a transposed-conv output (LowFormer)."""

    def __init__(self, channels: int, stride: int = 1) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.num_heads = max(1, int(channels * 0.5) // 30)
        self.head_dim = int((channels // self.num_heads) * 0.5)
        inner = self.num_heads * self.head_dim
        k = 5 if stride > 1 else 3
        self.down = nn.Sequential(
            nn.Conv2d(channels, channels, k, stride, k // 2, groups=channels, bias=False),
            nn.BatchNorm2d(channels),
        )
        self.qkv = nn.Conv2d(channels, 3 * inner, 1, bias=False)
        if stride == 1:
            self.up = nn.ConvTranspose2d(inner, channels, 3, 1, 1)
        else:
            self.up = nn.ConvTranspose2d(inner, channels, 2 * stride, stride, stride // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.qkv(self.down(x))
        lh, lw = y.shape[-2:]
        y = y.reshape(b, self.num_heads, 3 * self.head_dim, lh * lw).transpose(-2, -1)
        q, k, v = y.chunk(3, dim=-1)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, hw, d)
        out = out.transpose(-2, -1).reshape(b, self.num_heads * self.head_dim, lh, lw)
        return self.up(out)[:, :, :h, :w]


class LowFormerBlock(nn.Sequential):
    def __init__(self, channels: int, att_stride: int, mlp_ratio: int, drop_path: float) -> None:
        mlp = nn.Sequential(
            nn.GroupNorm(1, channels),
            nn.Conv2d(channels, channels * mlp_ratio, 1),
            nn.GELU(),
            nn.Conv2d(channels * mlp_ratio, channels, 1),
        )
        local = (
            FusedMBConv(channels, channels, 1, 4, first_bias=True)
            if channels < 256
            else MBConv(channels, 4)
        )
        super().__init__(
            Residual(nn.Sequential(nn.GroupNorm(1, channels), Lowtention(channels, att_stride)), drop_path),
            Residual(mlp, drop_path),
            Residual(local, drop_path),
        )  # fmt: skip


class LowFormer(ImageClassifier):
    """LowFormer: fused-MBConv stages, then lowtention stages, and a wide head."""

    width_args = ("widths", "head_widths")
    depth_args = ("depths",)

    def __init__(
        self,
        widths: tuple[int, int, int, int, int] = (16, 32, 64, 128, 256),
        depths: tuple[int, int, int, int, int] = (0, 1, 1, 5, 5),
        big_downsample: bool = True,
        huge: bool = False,
        head_widths: tuple[int, int] = (1536, 1600),
        stem_stride: int = 2,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int | tuple[int, int] = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if len(widths) != 5 or len(depths) != 5:
            raise ValueError("LowFormer needs 5 widths and 5 depths (stem + 4 stages)")
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride}")
        self.num_classes, self.in_chans = num_classes, in_chans
        total = sum(depths[3:])
        rates = iter([drop_path_rate * i / max(total - 1, 1) for i in range(total)])
        stem: list[nn.Module] = [_conv(in_chans, widths[0], 3, stem_stride)]
        stem += [
            Residual(FusedMBConv(widths[0], widths[0], 1, 4 if huge else 2))
            for _ in range(depths[0])
        ]
        self.stem = nn.Sequential(*stem)
        stages: list[nn.Module] = []
        self.feature_info = []
        cin, stride = widths[0], stem_stride
        for i in (1, 2, 3, 4):
            w = widths[i]
            stride *= 2
            if i < 3:
                expand = 6 if big_downsample or huge else 4
                blocks: list[nn.Module] = [FusedMBConv(cin, w, 2, expand)]
                blocks += [Residual(FusedMBConv(w, w, 1, 4)) for _ in range(depths[i] - 1)]
            else:
                expand = 6 if big_downsample or (huge and i == 3) else 4
                blocks = [FusedMBConv(cin, w, 2, expand)]
                blocks += [
                    LowFormerBlock(w, 2 if i == 3 else 1, 4, next(rates)) for _ in range(depths[i])
                ]
            stages.append(nn.Sequential(*blocks))
            self.feature_info.append(FeatureInfo(w, stride, f"stages.{i - 1}"))
            cin = w
        self.stages = nn.Sequential(*stages)
        # padded strided layers map any input size onto the stages: no size constraint
        self.head_conv = _conv(cin, head_widths[0], 1)  # the wide 1x1 conv closes the backbone
        self.num_features = head_widths[0]
        self.hidden_width = head_widths[1]
        self.cam_target = "stages.3"
        self.head_drop = nn.Dropout(drop_rate)
        self.head = self._make_head(num_classes)

    def _make_head(self, num_classes: int) -> nn.Module:
        """Linear (no bias) -> LayerNorm -> Hardswish -> dropout -> linear, as released."""
        if num_classes == 0:
            return nn.Identity()
        return nn.Sequential(
            nn.Linear(self.num_features, self.hidden_width, bias=False),
            nn.LayerNorm(self.hidden_width),
            nn.Hardswish(),
            self.head_drop,
            nn.Linear(self.hidden_width, num_classes),
        )

    def reset_classifier(self, num_classes: int) -> None:
        """A new head; ``0`` removes the whole two-layer head (pooled features come out)."""
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        self.num_classes = num_classes
        self.head = self._make_head(num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.head_conv(self.stages(self.stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(2, 3))
        return x if pre_logits else self.head(x)


_PAPER = "LowFormer: Hardware Efficient Design for Convolutional Transformer Backbones"
_SRC = "official release altair199797/LowFormer (README model zoo; lowformer_model.py, configs)"


def _card(params: float, gmacs: float, top1: float) -> ModelCard:
    return ModelCard(
        "lowformer", _PAPER, 2025, "hybrid", params_m=params, gmacs=gmacs, top1=top1, source=_SRC
    )


@register_model(_card(14.1, 0.944, 78.4))
def lowformer_b0(**kwargs: Any) -> LowFormer:
    return build_model(LowFormer, dict(depths=(0, 1, 1, 3, 4), big_downsample=False), kwargs)


@register_model(_card(17.9, 1.41, 79.9))
def lowformer_b1(**kwargs: Any) -> LowFormer:
    return build_model(LowFormer, {}, kwargs)


@register_model(_card(33.9, 2.573, 81.2))
def lowformer_b15(**kwargs: Any) -> LowFormer:
    defaults = dict(widths=(20, 40, 80, 160, 320), depths=(0, 1, 1, 6, 6), head_widths=(2304, 2560))
    return build_model(LowFormer, defaults, kwargs)


@register_model(_card(57.1, 6.098, 83.6))
def lowformer_b3(**kwargs: Any) -> LowFormer:
    defaults = dict(widths=(32, 64, 128, 256, 512), depths=(1, 2, 3, 6, 6), huge=True)
    return build_model(LowFormer, defaults, kwargs)


@register_model(
    ModelCard(
        "lowformer",
        _PAPER,
        2025,
        "hybrid",
        scale="cpu",
        img_size=32,
        notes="3x3/1 stem: grids 32/16/8/4/2; lowtention attends over 2x2 tokens in both stages",
    )
)
def lowformer_pico(**kwargs: Any) -> LowFormer:
    defaults = dict(
        widths=(16, 24, 32, 64, 96),
        depths=(0, 1, 1, 2, 2),
        head_widths=(256, 256),
        stem_stride=1,
        img_size=32,
    )
    return build_model(LowFormer, defaults, kwargs)
