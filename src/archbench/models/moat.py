"""MOAT: Alternating Mobile Convolution and Attention.

*MOAT: Alternating Mobile Convolution and Attention Brings Strong Vision Models* (Yang et
al., ICLR 2023). A conv stem, two stages of MBConv blocks (with squeeze-and-excitation),
then two stages of MOAT blocks. A MOAT block is a transformer block whose MLP is replaced
by an MBConv (no SE) and moved in front of the attention: MBConv (which also does the
stride-2 downsampling in a stage's first block) then LayerNorm + multi-head
self-attention with a 2-D relative position bias (``RelativePositionBiasAttention``,
heads of 32 channels). For classification the attention is global over the stage's grid.
The head pools, applies LayerNorm and a linear classifier. Shortcuts of downsampling
blocks are 2x2 average pooling then a 1x1 conv where the width changes, as in the
official deeplab2 code.

Relative-position tables: the release learns a (2P-1) x (2P-1) table per head with
P = 14 at stride 16 and P = 7 at stride 32 (``_STRIDE_16_POSITION_EMBEDDING_SIZE``,
``_STRIDE_32_POSITION_EMBEDDING_SIZE`` in deeplab2's moat.py) and resizes it to the
window; so at 224 the stage-3 tables are 27 x 27 and the stage-4 tables 13 x 13, which
gives 27.85M parameters for MOAT-0 (the paper's 27.8M). Here P is the stage's grid at
``img_size``, which equals the release's sizes at 224.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..layers import DropPath, drop_path_rates
from ..layers.attention_variants import RelativePositionBiasAttention
from ._base import FeatureInfo, ImageClassifier, check_img_size
from ._registry import ModelCard, build_model, register_model

__all__ = ["MOAT"]


class SqueezeExcite(nn.Module):
    """SE on the expanded width with a bottleneck of ``hidden`` channels and SiLU."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, hidden, 1)
        self.expand = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.expand(nn.functional.silu(self.reduce(x.mean(dim=(2, 3), keepdim=True))))
        return x * torch.sigmoid(s)


class MBConv(nn.Module):
    """Pre-norm inverted bottleneck: BN, 1x1 expand, BN, GELU, dw 3x3 (stride), BN, GELU,
    optional SE, 1x1 shrink; shortcut pooled (and 1x1-projected) when shapes change."""

    def __init__(
        self, cin: int, cout: int, stride: int, expansion: int, se: bool, drop_path: float
    ) -> None:
        super().__init__()
        inner = cout * expansion
        shortcut: list[nn.Module] = []
        if stride > 1:
            shortcut.append(nn.AvgPool2d(2, stride, ceil_mode=True))
        if cin != cout:
            shortcut.append(nn.Conv2d(cin, cout, 1))
        self.shortcut = nn.Sequential(*shortcut)
        self.pre_norm = nn.BatchNorm2d(cin)
        self.expand = nn.Conv2d(cin, inner, 1, bias=False)
        self.expand_norm = nn.BatchNorm2d(inner)
        self.dw = nn.Conv2d(inner, inner, 3, stride, 1, groups=inner, bias=False)
        self.dw_norm = nn.BatchNorm2d(inner)
        self.act = nn.GELU()
        self.se = SqueezeExcite(inner, max(1, int(cout * 0.25))) if se else nn.Identity()
        self.shrink = nn.Conv2d(inner, cout, 1)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.expand_norm(self.expand(self.pre_norm(x))))
        y = self.shrink(self.se(self.act(self.dw_norm(self.dw(y)))))
        return self.shortcut(x) + self.drop_path(y)


class MOATBlock(nn.Module):
    """MBConv (no SE) then LayerNorm + relative-position self-attention, both residual."""

    def __init__(
        self,
        cin: int,
        cout: int,
        stride: int,
        expansion: int,
        head_dim: int,
        table_size: int,
        drop_path: float,
    ) -> None:
        super().__init__()
        self.mbconv = MBConv(cin, cout, stride, expansion, se=False, drop_path=drop_path)
        self.norm = nn.LayerNorm(cout, eps=1e-5)
        self.attn = RelativePositionBiasAttention(cout, head_dim, table_size)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mbconv(x)
        t = x.permute(0, 2, 3, 1)
        t = t + self.drop_path(self.attn(self.norm(t)))
        return t.permute(0, 3, 1, 2)


class MOAT(ImageClassifier):
    """MOAT classifier: stem, MBConv stages, MOAT stages, pooled LayerNorm head."""

    # head_dim is the width of one attention head: wider stages get more heads
    width_args = ("stem_dim", "dims")
    depth_args = ("depths",)

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int | tuple[int, int] = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        stem_dim: int = 64,
        dims: tuple[int, ...] = (96, 192, 384, 768),
        depths: tuple[int, ...] = (2, 3, 7, 2),
        block_types: tuple[str, ...] = ("mbconv", "mbconv", "moat", "moat"),
        stem_stride: int = 2,
        expansion: int = 4,
        head_dim: int = 32,
    ) -> None:
        super().__init__()
        n = len(dims)
        if not len(depths) == len(block_types) == n:
            raise ValueError("dims, depths and block_types need one entry per stage")
        bad = sorted(set(block_types) - {"mbconv", "moat"})
        if bad:
            raise ValueError(f"block_types must be 'mbconv' or 'moat', got {bad}")
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride}")
        reduction = stem_stride * 2**n
        size = check_img_size(img_size, 1, "MOAT", min_size=reduction)
        self.num_classes, self.in_chans, self.num_features = num_classes, in_chans, dims[-1]
        # padded strided layers map any input size onto the stages; the position tables
        # are built for img_size (hence its minimum) and resized to other grids
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, stem_dim, 3, stem_stride, 1),
            nn.BatchNorm2d(stem_dim),
            nn.GELU(),
            nn.Conv2d(stem_dim, stem_dim, 3, 1, 1),
        )
        dprs = drop_path_rates(drop_path_rate, depths)
        stages, cin, red = [], stem_dim, stem_stride
        self.feature_info = []
        for i in range(n):
            red *= 2
            table = size[0] // red  # relative-position table sized for the build-time grid
            blocks: list[nn.Module] = []
            for j in range(depths[i]):
                stride = 2 if j == 0 else 1
                if block_types[i] == "mbconv":
                    blocks.append(MBConv(cin, dims[i], stride, expansion, True, dprs[i][j]))
                else:
                    blocks.append(
                        MOATBlock(cin, dims[i], stride, expansion, head_dim, table, dprs[i][j])
                    )
                cin = dims[i]
            stages.append(nn.Sequential(*blocks))
            self.feature_info.append(FeatureInfo(dims[i], red, f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(dims[-1], eps=1e-5)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.cam_target = f"stages.{n - 1}"

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.norm(x.mean(dim=(2, 3))))
        return x if pre_logits else self.head(x)


_PAPER = "MOAT: Alternating Mobile Convolution and Attention Brings Strong Vision Models"
_SRC = (
    "MOAT paper Table (MOAT-0 at 224: 27.8M, 5.7G FLOPs, 83.3 top-1); architecture from "
    "google-research/deeplab2 model/pixel_encoder/moat.py (moat0_config) and moat_blocks.py"
)


@register_model(
    ModelCard("moat", _PAPER, 2023, "hybrid", params_m=27.8, gmacs=5.7, top1=83.3, source=_SRC)
)
def moat_0(**kwargs: Any) -> MOAT:
    return build_model(MOAT, dict(), kwargs)


@register_model(
    ModelCard(
        "moat",
        _PAPER,
        2023,
        "hybrid",
        scale="cpu",
        img_size=32,
        notes="stem stride 1: grids 16, 8, 4, 2 (MOAT stages at 4x4 and 2x2)",
    )
)
def moat_pico(**kwargs: Any) -> MOAT:
    return build_model(
        MOAT,
        dict(img_size=32, stem_dim=32, dims=(32, 64, 128, 192), depths=(1, 2, 2, 1), stem_stride=1),
        kwargs,
    )
