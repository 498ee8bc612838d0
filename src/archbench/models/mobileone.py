"""MobileOne: over-parameterized at train time, a plain conv stack at inference.

*MobileOne: An Improved One millisecond Mobile Backbone* (Vasu et al., 2023). Every block
is a depthwise 3x3 unit followed by a pointwise 1x1 unit; at train time each unit sums
``k`` parallel conv-BN branches, a 1x1 conv-BN "scale" branch (for 3x3 units) and a BN
"identity" branch (when shapes allow), then applies ReLU (and SE in MobileOne-S4).
``reparameterize()`` folds all branches into one convolution with bias; in eval mode the
fused model gives the same outputs.

Parameter counts: the paper's table reports the fused (inference) model; archbench builds
the train-time model by default, so canonical cards carry the train-time count of the
official release, and ``extra["params_m_fused"]`` holds the paper's figure, which the
family tests check on the fused model.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import SqueezeExcite
from ..layers.reparam import fuse_conv_bn, pad_kernel, reparameterize_model
from ._base import FeatureInfo, ImageClassifier, reject_drop_path
from ._registry import ModelCard, build_model, register_model

__all__ = ["MobileOne", "MobileOneBlock"]


class _ConvBN(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int, stride: int, groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)


class MobileOneBlock(nn.Module):
    """One MobileOne unit: ``num_branches`` kxk conv-BN branches + 1x1 scale + BN skip."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        num_branches: int = 1,
        use_se: bool = False,
        inference_mode: bool = False,
    ) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"MobileOneBlock needs an odd kernel_size, got {kernel_size}")
        if num_branches < 1:
            raise ValueError(f"num_branches must be >= 1, got {num_branches}")
        self.cin, self.cout, self.kernel_size = cin, cout, kernel_size
        self.stride, self.groups = stride, groups
        if inference_mode:
            self.reparam_conv = nn.Conv2d(
                cin, cout, kernel_size, stride, kernel_size // 2, groups=groups, bias=True
            )
        else:
            self.rbr_skip = nn.BatchNorm2d(cin) if cin == cout and stride == 1 else None
            self.rbr_conv = nn.ModuleList(
                _ConvBN(cin, cout, kernel_size, stride, groups) for _ in range(num_branches)
            )
            self.rbr_scale = _ConvBN(cin, cout, 1, stride, groups) if kernel_size > 1 else None
        self.se = SqueezeExcite(cout, rd_channels=int(cout * 0.0625)) if use_se else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "reparam_conv"):
            return self.act(self.se(self.reparam_conv(x)))
        parts = [self.rbr_skip] if self.rbr_skip is not None else []
        if self.rbr_scale is not None:
            parts.append(self.rbr_scale)
        parts.extend(self.rbr_conv)
        out = parts[0](x)
        if len(parts) > 1:
            # The first sum is a fresh tensor; the other branches are added into it in
            # place (no branch's own output is overwritten), in the same order as before.
            out = out + parts[1](x)
            for branch in parts[2:]:
                out += branch(x)
        return self.act(self.se(out))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Replace the train-time branches by one kxk convolution with bias."""
        if hasattr(self, "reparam_conv"):
            return
        k = self.kernel_size
        weight, bias = 0, 0
        for branch in self.rbr_conv:
            w, b = fuse_conv_bn(branch.conv.weight, branch.bn)
            weight, bias = weight + w, bias + b
        if self.rbr_scale is not None:
            w, b = fuse_conv_bn(self.rbr_scale.conv.weight, self.rbr_scale.bn)
            weight, bias = weight + pad_kernel(w, k), bias + b
        if self.rbr_skip is not None:
            w, b = fuse_conv_bn(None, self.rbr_skip, identity_groups=self.groups, identity_size=k)
            weight, bias = weight + w, bias + b
        conv = nn.Conv2d(
            self.cin, self.cout, k, self.stride, k // 2, groups=self.groups, bias=True
        ).to(weight)
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
        del self.rbr_conv, self.rbr_scale, self.rbr_skip
        self.reparam_conv = conv


class MobileOne(ImageClassifier):
    """MobileOne: stem unit, four stages of (depthwise unit, pointwise unit) blocks, GAP, linear.

    ``widths`` are the four stage widths (the paper's 64/128/256/512 times its width
    multipliers); ``se_blocks`` is how many trailing blocks of each stage use SE.
    ``stem_stride=1`` keeps the resolution for 32x32 inputs.
    """

    width_args = ("widths", "stem_width")
    depth_args = ("depths",)

    def __init__(
        self,
        depths: tuple[int, ...] = (2, 8, 10, 1),
        widths: tuple[int, ...] = (48, 128, 256, 1024),
        stem_width: int = 48,
        stem_stride: int = 2,
        num_branches: int = 1,
        se_blocks: tuple[int, ...] = (0, 0, 0, 0),
        inference_mode: bool = False,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if not (len(depths) == len(widths) == len(se_blocks)):
            raise ValueError(
                f"depths {depths}, widths {widths} and se_blocks {se_blocks} need equal lengths"
            )
        if any(s > d for s, d in zip(se_blocks, depths)):
            raise ValueError(f"se_blocks {se_blocks} cannot exceed depths {depths}")
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride}")
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        reject_drop_path(
            drop_path_rate, "MobileOne", " (its blocks sum parallel branches that fold into a conv)"
        )
        self.stage0 = MobileOneBlock(
            in_chans, stem_width, 3, stem_stride, inference_mode=inference_mode
        )
        reduction = stem_stride
        cin = stem_width
        self.feature_info = [FeatureInfo(stem_width, reduction, "stage0")]
        for i, (depth, width, n_se) in enumerate(zip(depths, widths, se_blocks)):
            blocks: list[nn.Module] = []
            for j in range(depth):
                stride = 2 if j == 0 else 1
                se = j >= depth - n_se
                blocks.append(
                    MobileOneBlock(
                        cin, cin, 3, stride, cin, num_branches, se, inference_mode=inference_mode
                    )
                )
                blocks.append(
                    MobileOneBlock(
                        cin, width, 1, 1, 1, num_branches, se, inference_mode=inference_mode
                    )
                )
                cin = width
            reduction *= 2
            self.add_module(f"stage{i + 1}", nn.Sequential(*blocks))
            self.feature_info.append(FeatureInfo(width, reduction, f"stage{i + 1}"))
        self.num_stages = len(depths)
        # padded strided layers map any input size onto the stages: no size constraint
        self.num_features = cin
        self.cam_target = f"stage{self.num_stages}"
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(cin, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.stage0(x)
        for i in range(self.num_stages):
            x = getattr(self, f"stage{i + 1}")(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(F.adaptive_avg_pool2d(x, 1).flatten(1))
        return x if pre_logits else self.head(x)

    def reparameterize(self) -> MobileOne:
        """Fuse every block's branches in place (eval mode); returns the model."""
        return reparameterize_model(self)


_PAPER = "MobileOne: An Improved One millisecond Mobile Backbone"
_SRC = (
    "paper (ImageNet results table: fused params, top-1); train-time params of the official "
    "apple/ml-mobileone release (unfused checkpoints)"
)


def _mobileone(mult: tuple[float, ...], kwargs: dict[str, Any], **extra: Any) -> MobileOne:
    widths = tuple(int(b * m) for b, m in zip((64, 128, 256, 512), mult))
    defaults = dict(widths=widths, stem_width=min(64, int(64 * mult[0])), **extra)
    return build_model(MobileOne, defaults, kwargs)


def _card(unfused: float, fused: float, gmacs: float, top1: float) -> ModelCard:
    return ModelCard(
        "mobileone",
        _PAPER,
        2023,
        "cnn",
        params_m=unfused,
        gmacs=gmacs,
        top1=top1,
        source=_SRC,
        notes=f"card params are the train-time (unfused) model; the paper's fused figure is "
        f"{fused}M (extra['params_m_fused'])",
        extra={"params_m_fused": fused},
    )


@register_model(_card(5.29, 2.1, 0.275, 71.4))
def mobileone_s0(**kwargs: Any) -> MobileOne:
    return _mobileone((0.75, 1.0, 1.0, 2.0), kwargs, num_branches=4)


@register_model(_card(4.83, 4.8, 0.825, 75.9))
def mobileone_s1(**kwargs: Any) -> MobileOne:
    return _mobileone((1.5, 1.5, 2.0, 2.5), kwargs)


@register_model(_card(7.88, 7.8, 1.299, 77.4))
def mobileone_s2(**kwargs: Any) -> MobileOne:
    return _mobileone((1.5, 2.0, 2.5, 4.0), kwargs)


@register_model(_card(10.17, 10.1, 1.896, 78.1))
def mobileone_s3(**kwargs: Any) -> MobileOne:
    return _mobileone((2.0, 2.5, 3.0, 4.0), kwargs)


@register_model(_card(14.95, 14.8, 2.978, 79.4))
def mobileone_s4(**kwargs: Any) -> MobileOne:
    return _mobileone((3.0, 3.5, 3.5, 4.0), kwargs, se_blocks=(0, 0, 5, 1))


@register_model(ModelCard("mobileone", _PAPER, 2023, "cnn", scale="cpu", img_size=32))
def mobileone_pico(**kwargs: Any) -> MobileOne:
    """S0-style (k=4 branches) at widths 24-128, stride-1 stem, one SE block in the last stage."""
    return build_model(
        MobileOne,
        dict(
            depths=(1, 2, 2, 1),
            widths=(24, 48, 96, 128),
            stem_width=24,
            stem_stride=1,
            num_branches=4,
            se_blocks=(0, 0, 1, 1),
            img_size=32,
        ),
        kwargs,
    )
