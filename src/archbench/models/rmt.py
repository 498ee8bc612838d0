"""RMT: Retentive Networks Meet Vision Transformers.

*RMT: Retentive Networks Meet Vision Transformers* (Fan et al., CVPR 2024). A four-stage
hierarchy whose token mixer is Manhattan self-attention (``ManhattanDecayAttention``):
softmax attention with an explicit spatial prior, a per-head decay gamma^(|dx|+|dy|)
added as log(gamma) * distance to the logits. In the early (high-resolution) stages the
attention is decomposed along the two image axes (rows, then columns, each with its 1-D
decay), which keeps the cost linear-ish in the number of tokens. Each block adds a 3x3
depthwise conditional position encoding, the attention (with a 5x5 depthwise LePE on v)
and an FFN with a 3x3 depthwise conv inside. A four-conv stem reduces by 4, strided 3x3
conv + BatchNorm merges patches between stages, and the head projects to 1024 channels
(linear, BatchNorm, SiLU) before pooling.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import DropPath, drop_path_rates
from ..layers.attention_variants import ManhattanDecayAttention
from ._base import FeatureInfo, ImageClassifier, check_img_size
from ._registry import ModelCard, build_model, register_model

__all__ = ["RMT"]


class _DWConv(nn.Module):
    """Depthwise conv on an NHWC tensor."""

    def __init__(self, dim: int, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, kernel, 1, kernel // 2, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class ConvFFN(nn.Module):
    """fc1 -> GELU -> (+ depthwise 3x3) -> fc2, on NHWC (RMT)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = _DWConv(hidden, 3)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.fc1(x))
        x = x + self.dwconv(x)
        return self.drop(self.fc2(x))


class RetBlock(nn.Module):
    """CPE (depthwise 3x3) + Manhattan self-attention + conv FFN, pre-norm, NHWC."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        decomposed: bool,
        initial_value: float,
        heads_range: float,
        drop: float,
        drop_path: float,
    ) -> None:
        super().__init__()
        self.pos = _DWConv(dim, 3)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = ManhattanDecayAttention(
            dim, num_heads, decomposed, initial_value=initial_value, heads_range=heads_range
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.ffn = ConvFFN(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos(x)
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.ffn(self.norm2(x)))


class RMTStage(nn.Module):
    """Optional patch merging (3x3/2 conv + BN), then RetBlocks. NCHW in and out."""

    def __init__(self, cin: int, dim: int, downsample: bool, blocks: list[RetBlock]) -> None:
        super().__init__()
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, dim, 3, 2, 1), nn.BatchNorm2d(dim))
            if downsample
            else nn.Identity()
        )
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x).permute(0, 2, 3, 1)
        return self.blocks(x).permute(0, 3, 1, 2)


def _stem(in_chans: int, dim: int) -> nn.Sequential:
    half = dim // 2
    return nn.Sequential(
        nn.Conv2d(in_chans, half, 3, 2, 1), nn.BatchNorm2d(half), nn.GELU(),
        nn.Conv2d(half, half, 3, 1, 1), nn.BatchNorm2d(half), nn.GELU(),
        nn.Conv2d(half, dim, 3, 2, 1), nn.BatchNorm2d(dim), nn.GELU(),
        nn.Conv2d(dim, dim, 3, 1, 1), nn.BatchNorm2d(dim),
    )  # fmt: skip


class RMT(ImageClassifier):
    """RMT classifier (VisRetNet in the official code)."""

    width_args = ("dims", "projection")
    depth_args = ("depths",)

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int | tuple[int, int] = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        dims: tuple[int, ...] = (64, 128, 256, 512),
        depths: tuple[int, ...] = (2, 2, 8, 2),
        num_heads: tuple[int, ...] = (4, 4, 8, 16),
        mlp_ratios: tuple[float, ...] = (3.0, 3.0, 3.0, 3.0),
        decomposed: tuple[bool, ...] = (True, True, False, False),
        initial_values: tuple[float, ...] = (2.0, 2.0, 2.0, 2.0),
        heads_ranges: tuple[float, ...] = (4.0, 4.0, 6.0, 6.0),
        projection: int = 1024,
        stem_stride: int = 4,
    ) -> None:
        super().__init__()
        n = len(dims)
        if not all(
            len(t) == n
            for t in (depths, num_heads, mlp_ratios, decomposed, initial_values, heads_ranges)
        ):
            raise ValueError("every per-stage option of RMT needs one entry per stage")
        if stem_stride not in (2, 4):
            raise ValueError(f"stem_stride must be 2 or 4, got {stem_stride}")
        check_img_size(img_size, 1, "RMT")
        self.num_classes, self.in_chans, self.num_features = num_classes, in_chans, projection
        # padded strided layers map any input size onto the stages: no size constraint
        self.stem = _stem(in_chans, dims[0])
        if stem_stride == 2:  # CPU-scale variant: second stride-2 conv of the stem made stride 1
            self.stem[6].stride = (1, 1)
        dprs = drop_path_rates(drop_path_rate, depths)
        stages, red = [], stem_stride
        self.feature_info = []
        for i in range(n):
            blocks = [
                RetBlock(
                    dims[i],
                    num_heads[i],
                    mlp_ratios[i],
                    decomposed[i],
                    initial_values[i],
                    heads_ranges[i],
                    drop_rate,
                    dprs[i][j],
                )
                for j in range(depths[i])
            ]
            if i:
                red *= 2
            stages.append(RMTStage(dims[max(i - 1, 0)], dims[i], i > 0, blocks))
            self.feature_info.append(FeatureInfo(dims[i], red, f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.proj = nn.Conv2d(dims[-1], projection, 1)  # the per-token linear of the official head
        self.norm = nn.BatchNorm2d(projection)
        self.act = nn.SiLU()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(projection, num_classes) if num_classes > 0 else nn.Identity()
        self.cam_target = f"stages.{n - 1}"

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.stages(self.stem(x))
        return self.act(self.norm(self.proj(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x.mean(dim=(2, 3)))
        return x if pre_logits else self.head(x)


_PAPER = "RMT: Retentive Networks Meet Vision Transformers"
_SRC = (
    "RMT paper Table (RMT-T 14M 2.5G 82.4; RMT-S 27M 4.5G 84.1) and qhfan/RMT "
    "classfication_release/RMT.py (RMT_T3, RMT_S)"
)
_SRC_T = _SRC + "; exact RMT-T count from the official training log RMT_log/rmt_t.txt: 14,334,216"


@register_model(
    ModelCard("rmt", _PAPER, 2024, "vit", params_m=14.33, gmacs=2.5, top1=82.4, source=_SRC_T)
)
def rmt_tiny(**kwargs: Any) -> RMT:
    return build_model(RMT, dict(), kwargs)


@register_model(
    ModelCard("rmt", _PAPER, 2024, "vit", params_m=27.0, gmacs=4.5, top1=84.1, source=_SRC)
)
def rmt_small(**kwargs: Any) -> RMT:
    return build_model(
        RMT,
        dict(
            depths=(3, 4, 18, 4),
            mlp_ratios=(4.0, 4.0, 3.0, 3.0),
            decomposed=(True, True, True, False),
        ),
        kwargs,
    )


@register_model(
    ModelCard(
        "rmt",
        _PAPER,
        2024,
        "vit",
        scale="cpu",
        img_size=32,
        notes="stem reduces by 2: grids 16, 8, 4, 2; decomposed attention in stages 1-2",
    )
)
def rmt_pico(**kwargs: Any) -> RMT:
    return build_model(
        RMT,
        dict(
            img_size=32,
            dims=(32, 64, 128, 192),
            depths=(1, 1, 2, 1),
            num_heads=(2, 2, 4, 6),
            mlp_ratios=(3.0, 3.0, 3.0, 3.0),
            projection=256,
            stem_stride=2,
        ),
        kwargs,
    )
