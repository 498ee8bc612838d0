"""FcaFormer (*Fcaformer: Forward Cross Attention in Hybrid Vision Transformer*, 2023).

Hybrid FcaFormer (official release hkzhang-git/FcaFormer, L1-L4): a two-conv stem
(stride 4), two ConvNeXt stages, then two transformer stages of FcaFormer blocks, with
conv patch merging (1x1 -> 3x3/2 depthwise -> 1x1, BatchNorm) between stages.

Forward cross attention: inside a transformer stage, block i attends not only to its
own tokens but also to *cross tokens* produced by the earlier blocks of the stage (at
most ``cab_max_d`` of them). Each block's token merge and enhancement (TME) module makes
its cross tokens with a 7x7 stride-4 depthwise convolution of its output (merge) and
enhances its own tokens with a 3x3 depthwise conv + BN before the FFN. Cross tokens are
calibrated by learnable scale factors (one per cross token), normalized, projected to
keys and values with the block's own qkv weights, and carry a learnable per-head bias;
the block's own tokens carry a LeViT-style relative position bias. All keys share one
softmax, so the attention is softmax(QK^T/sqrt(d) + B)V over [own tokens, cross tokens]
and runs through SDPA with B as the additive mask.

The relative bias tables and the number of cross tokens depend on the grid, so a model
is tied to its ``img_size``.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import DropPath, drop_path_rates
from ..layers.helpers import init_trunc_normal
from ._base import FeatureInfo, ImageClassifier, check_img_size
from ._registry import ModelCard, build_model, register_model

__all__ = ["FcaAttentionBlock", "FcaFormer"]


def _conv_bn(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)
    )


class ConvNeXtBlock(nn.Module):
    """7x7 depthwise conv -> LN -> 4x MLP -> LayerScale, residual (NCHW)."""

    def __init__(self, dim: int, drop_path: float) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.dwconv(x).permute(0, 2, 3, 1))
        y = self.fc2(self.act(self.fc1(y))) * self.gamma
        return x + self.drop_path(y.permute(0, 3, 1, 2))


class PatchMerging(nn.Sequential):
    """1x1 conv-BN, GELU, 3x3/2 depthwise conv-BN, GELU, 1x1 conv-BN."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            _conv_bn(cin, cout),
            nn.GELU(),
            _conv_bn(cout, cout, 3, 2, groups=cout),
            nn.GELU(),
            _conv_bn(cout, cout),
        )


def _relative_offsets(grid: tuple[int, int]) -> tuple[int, list[int]]:
    """LeViT-style |dy|, |dx| offset ids for every (query, key) pair on a grid."""
    points = list(itertools.product(range(grid[0]), range(grid[1])))
    table: dict[tuple[int, int], int] = {}
    idx = []
    for p in points:
        for q in points:
            off = (abs(p[0] - q[0]), abs(p[1] - q[1]))
            idx.append(table.setdefault(off, len(table)))
    return len(table), idx


class FcaAttentionBlock(nn.Module):
    """FcaFormer block: forward cross attention, TME (merge + enhance), FFN."""

    def __init__(
        self,
        dim: int,
        grid: tuple[int, int],
        num_heads: int,
        num_cross_blocks: int,
        makes_cross_tokens: bool,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.grid = grid
        self.gamma_1 = nn.Parameter(torch.full((dim,), 1e-6))
        self.gamma_2 = nn.Parameter(torch.full((dim,), 1e-6))
        cross_per_block = math.ceil(grid[0] / 4) * math.ceil(grid[1] / 4)
        self.num_cross = num_cross_blocks * cross_per_block
        # TME, merge: cross tokens for the later blocks
        self.merge = (
            nn.Conv2d(dim, dim, 7, 4, 3, groups=dim, bias=False) if makes_cross_tokens else None
        )
        if self.num_cross:
            self.cross_bias = nn.Parameter(torch.zeros(1, num_heads, 1, self.num_cross))
            self.cross_norm = nn.LayerNorm(dim)
            self.cross_scale = nn.Parameter(torch.ones(1, self.num_cross, 1))  # LSFs
        self.norm1 = nn.LayerNorm(dim)
        num_offsets, idx = _relative_offsets(grid)
        n = grid[0] * grid[1]
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, num_offsets))
        self.register_buffer(
            "attention_bias_idxs", torch.tensor(idx, dtype=torch.long).view(n, n), persistent=False
        )
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(drop)
        # TME, enhance
        self.local_conv = _conv_bn(dim, dim, 3, groups=dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        # the release's MLP normalizes its input once more
        self.mlp = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(drop),
            nn.Linear(hidden, dim), nn.Dropout(drop),
        )  # fmt: skip
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(
        self, x: torch.Tensor, cross: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, n, c = x.shape
        h, d = self.num_heads, c // self.num_heads
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, h, d).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias = self.attention_biases[:, self.attention_bias_idxs].unsqueeze(0)  # (1, h, N, N)
        if self.num_cross:
            if cross is None or cross.shape[1] != self.num_cross:
                raise ValueError(f"this block expects {self.num_cross} cross tokens")
            s = self.cross_norm(cross * self.cross_scale)
            kv_s = self.qkv(s).reshape(b, -1, 3, h, d).permute(2, 0, 3, 1, 4)
            k = torch.cat([k, kv_s[1]], dim=2)
            v = torch.cat([v, kv_s[2]], dim=2)
            bias = torch.cat([bias.expand(1, h, n, n), self.cross_bias.expand(1, h, n, -1)], -1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        out = self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))
        x = x + self.drop_path(self.gamma_1 * out)
        grid = x.transpose(1, 2).reshape(b, c, *self.grid)
        new_cross = self.merge(grid).flatten(2).transpose(1, 2) if self.merge is not None else None
        x = self.local_conv(grid).flatten(2).transpose(1, 2)
        x = x + self.drop_path(self.gamma_2 * self.mlp(self.norm2(x)))
        return x, new_cross


class FcaStage(nn.Module):
    """FcaFormer blocks sharing cross tokens forward; NCHW in and out."""

    def __init__(
        self,
        dim: int,
        grid: tuple[int, int],
        depth: int,
        num_heads: int,
        cab_max_d: int,
        mlp_ratio: float,
        drop: float,
        dpr: list[float],
    ) -> None:
        super().__init__()
        self.cab_max_d = cab_max_d
        self.blocks = nn.ModuleList(
            FcaAttentionBlock(
                dim, grid, num_heads, min(i, cab_max_d), i < depth - 1, mlp_ratio, drop, dpr[i]
            )
            for i in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        made: list[torch.Tensor] = []
        for i, blk in enumerate(self.blocks):
            cross = torch.cat(made[-self.cab_max_d :], dim=1) if i > 0 else None
            x, s = blk(x, cross)
            if s is not None:
                made.append(s)
        return x.transpose(1, 2).reshape(b, c, h, w)


class FcaFormer(ImageClassifier):
    """Hybrid FcaFormer: ConvNeXt stages, then forward-cross-attention stages."""

    width_args = ("embed_dims",)
    depth_args = ("depths",)

    def __init__(
        self,
        embed_dims: tuple[int, int, int, int] = (64, 128, 192, 320),
        depths: tuple[int, int, int, int] = (2, 2, 6, 2),
        num_heads: tuple[int, int] = (6, 10),
        mlp_ratio: float = 4.0,
        cab_max_d: int = 12,
        stem_stride: int = 4,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int | tuple[int, int] = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if len(embed_dims) != 4 or len(depths) != 4 or len(num_heads) != 2:
            raise ValueError(
                "FcaFormer needs 4 embed_dims, 4 depths and 2 num_heads (for the attention stages)"
            )
        if stem_stride not in (2, 4):
            raise ValueError(f"stem_stride must be 2 or 4, got {stem_stride}")
        size = check_img_size(img_size, stem_stride * 8, "FcaFormer")
        self.num_classes, self.in_chans = num_classes, in_chans
        self.fixed_input_size = size
        self.img_size_multiple = stem_stride * 8  # the sizes its constructor accepts
        d0 = embed_dims[0]
        self.stem = nn.Sequential(
            _conv_bn(in_chans, d0 // 2, 3, 2 if stem_stride == 4 else 1),
            nn.GELU(),
            _conv_bn(d0 // 2, d0, 3, 2),
        )
        dpr = drop_path_rates(drop_path_rate, depths)
        stages: list[nn.Module] = []
        self.feature_info = []
        stride = stem_stride
        for i in range(4):
            if i > 0:
                stride *= 2
                stages.append(PatchMerging(embed_dims[i - 1], embed_dims[i]))
            grid = (size[0] // stride, size[1] // stride)
            if i < 2:
                stage: nn.Module = nn.Sequential(
                    *(ConvNeXtBlock(embed_dims[i], dpr[i][j]) for j in range(depths[i]))
                )
            else:
                stage = FcaStage(
                    embed_dims[i], grid, depths[i], num_heads[i - 2], cab_max_d, mlp_ratio,
                    drop_rate, dpr[i],
                )  # fmt: skip
            stages.append(stage)
            self.feature_info.append(
                FeatureInfo(embed_dims[i], stride, f"stages.{len(stages) - 1}")
            )
        self.stages = nn.Sequential(*stages)
        self.num_features = embed_dims[-1]
        self.cam_target = self.feature_info[-1].module
        self.norm_head = nn.LayerNorm(embed_dims[-1])
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dims[-1], num_classes) if num_classes else nn.Identity()
        self.apply(self._init_weights)

    _init_weights = staticmethod(init_trunc_normal)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.norm_head(x.mean(dim=(2, 3))))
        return x if pre_logits else self.head(x)


_PAPER = "Fcaformer: Forward Cross Attention in Hybrid Vision Transformer"
_SRC = "official release hkzhang-git/FcaFormer (README table; models/fcaformer.py configs)"


def _card(params: float, gmacs: float, top1: float) -> ModelCard:
    return ModelCard(
        "fcaformer", _PAPER, 2023, "hybrid", params_m=params, gmacs=gmacs, top1=top1, source=_SRC
    )


@register_model(_card(6.2, 1.4, 80.3))
def fcaformer_l1(**kwargs: Any) -> FcaFormer:
    return build_model(FcaFormer, {}, kwargs)


@register_model(_card(16.3, 3.6, 83.1))
def fcaformer_l2(**kwargs: Any) -> FcaFormer:
    defaults = dict(embed_dims=(96, 192, 320, 480), depths=(2, 2, 7, 2), num_heads=(10, 15))
    return build_model(FcaFormer, defaults, kwargs)


@register_model(_card(27.9, 6.7, 84.2))
def fcaformer_l3(**kwargs: Any) -> FcaFormer:
    defaults = dict(embed_dims=(96, 192, 320, 512), depths=(3, 6, 12, 3), num_heads=(10, 16))
    return build_model(FcaFormer, defaults, kwargs)


@register_model(_card(65.6, 14.5, 84.9))
def fcaformer_l4(**kwargs: Any) -> FcaFormer:
    defaults = dict(embed_dims=(128, 256, 512, 768), depths=(3, 6, 12, 3), num_heads=(16, 24))
    return build_model(FcaFormer, defaults, kwargs)


@register_model(
    ModelCard(
        "fcaformer",
        _PAPER,
        2023,
        "hybrid",
        scale="cpu",
        img_size=32,
        notes="stem stride 2: ConvNeXt at 16x16 and 8x8, forward cross attention at 4x4 and 2x2",
    )
)
def fcaformer_pico(**kwargs: Any) -> FcaFormer:
    defaults = dict(
        embed_dims=(24, 48, 96, 128),
        depths=(1, 1, 3, 2),
        num_heads=(3, 4),
        stem_stride=2,
        img_size=32,
    )
    return build_model(FcaFormer, defaults, kwargs)
