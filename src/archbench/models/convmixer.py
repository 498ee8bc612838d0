"""ConvMixer: patch embedding followed by depthwise/pointwise mixing at one resolution.

*Patches Are All You Need?* (Trockman & Kolter, 2022). A ``p x p`` stride-``p`` patch
convolution, then ``depth`` blocks of a residual depthwise ``k x k`` convolution and a
pointwise convolution, each followed by GELU and BatchNorm. The grid never changes.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..layers import DropPath, create_act, drop_path_rates
from ._base import FeatureInfo, ImageClassifier
from ._registry import ModelCard, build_model, register_model

__all__ = ["ConvMixer", "ConvMixerBlock"]


class ConvMixerBlock(nn.Module):
    """x + BN(act(dwconv_k(x))), then BN(act(conv1x1(.))) (Patches Are All You Need?)."""

    def __init__(
        self, dim: int, kernel_size: int, act: str = "gelu", drop_path: float = 0.0
    ) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size, groups=dim, padding="same")
        self.act1 = create_act(act)
        self.norm1 = nn.BatchNorm2d(dim)
        self.pwconv = nn.Conv2d(dim, dim, 1)
        self.act2 = create_act(act)
        self.norm2 = nn.BatchNorm2d(dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.norm1(self.act1(self.dwconv(x))))
        return self.norm2(self.act2(self.pwconv(x)))


class ConvMixer(ImageClassifier):
    """ConvMixer-``dim``/``depth`` with patch size ``patch_size`` and kernel ``kernel_size``.

    ``drop_path_rate`` (not in the paper) drops the residual depthwise branch per sample.
    """

    width_args = ("dim",)
    depth_args = ("depth",)
    isotropic = True  # feature_info lists every block

    def __init__(
        self,
        dim: int = 768,
        depth: int = 32,
        kernel_size: int = 7,
        patch_size: int = 7,
        act: str = "gelu",
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if dim <= 0 or depth <= 0 or kernel_size <= 0 or patch_size <= 0:
            raise ValueError(
                f"dim, depth, kernel_size and patch_size must be positive, got "
                f"{dim}, {depth}, {kernel_size}, {patch_size}"
            )
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, dim, patch_size, stride=patch_size),
            create_act(act),
            nn.BatchNorm2d(dim),
        )
        dprs = drop_path_rates(drop_path_rate, [depth])[0]
        self.blocks = nn.Sequential(*(ConvMixerBlock(dim, kernel_size, act, d) for d in dprs))
        # the patchify stem drops remainders and the blocks keep the grid: any size >= patch
        self.min_input_size = patch_size
        self.num_features = dim
        self.feature_info = [FeatureInfo(dim, patch_size, f"blocks.{i}") for i in range(depth)]
        self.cam_target = "blocks"
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.blocks(self.stem(x))


_PAPER = "Patches Are All You Need?"
_SRC = "paper Table 1 and the official release README (ImageNet-1k, 224px, params and top-1)"


@register_model(ModelCard("convmixer", _PAPER, 2022, "cnn", params_m=51.6, top1=81.37, source=_SRC))
def convmixer_1536_20(**kwargs: Any) -> ConvMixer:
    return build_model(ConvMixer, dict(dim=1536, depth=20, kernel_size=9, patch_size=7), kwargs)


@register_model(ModelCard("convmixer", _PAPER, 2022, "cnn", params_m=21.1, top1=80.16, source=_SRC))
def convmixer_768_32(**kwargs: Any) -> ConvMixer:
    return build_model(
        ConvMixer, dict(dim=768, depth=32, kernel_size=7, patch_size=7, act="relu"), kwargs
    )


@register_model(ModelCard("convmixer", _PAPER, 2022, "cnn", params_m=24.4, top1=76.94, source=_SRC))
def convmixer_1024_20(**kwargs: Any) -> ConvMixer:
    return build_model(ConvMixer, dict(dim=1024, depth=20, kernel_size=9, patch_size=14), kwargs)


@register_model(ModelCard("convmixer", _PAPER, 2022, "cnn", scale="cpu", img_size=32))
def convmixer_pico(**kwargs: Any) -> ConvMixer:
    """ConvMixer-128/6 with 2x2 patches (16x16 grid) and 5x5 depthwise kernels."""
    return build_model(
        ConvMixer, dict(dim=128, depth=6, kernel_size=5, patch_size=2, img_size=32), kwargs
    )
