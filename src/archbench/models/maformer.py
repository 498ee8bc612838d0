"""MAFormer (*MAFormer: A Transformer Network with Multi-scale Attention Fusion for Visual
Recognition*, 2022).

Each block's token mixer is a Multi-scale Attention Fusion (MAF) module with two
streams on the same tokens:

- local: multi-head attention inside non-overlapping windows (fine-grained,
  ``archbench.layers.local_attention.WindowAttention``);
- global: Global Learning with Down-sampling (GLD): a fully connected layer along the
  token axis maps the N tokens to ``N / down_ratio**2`` learned summary tokens, which
  then exchange information by multi-head self-attention (coarse-grained);
- fusion: the local tokens attend to the global tokens (cross attention) and the result
  is added to the local stream, so that each token decides how much global context it
  takes.

The network is a four-stage pyramid with convolutional patch embedding and merging.
All three attentions are softmax(QK^T/sqrt(d))V and run through SDPA.

Scope: the paper's variant tables (widths, depths, window sizes) and its parameter
counts could not be verified from a public source, and no official code was found, so
archbench registers only the CPU-scale variant; the MAF block follows the paper's
description above. GLD's token-axis layer ties a model to its ``img_size``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import Attention, DropPath, Mlp, drop_path_rates
from ..layers.helpers import init_trunc_normal_linear
from ..layers.local_attention import WindowAttention
from ._base import FeatureInfo, ImageClassifier, check_img_size
from ._registry import ModelCard, build_model, register_model

__all__ = ["MAFAttention", "MAFormer"]


class MAFAttention(nn.Module):
    """Local window attention + GLD global attention, fused by cross attention."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        grid: tuple[int, int],
        window_size: int,
        down_ratio: int,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        n = grid[0] * grid[1]
        m = max(1, (grid[0] // down_ratio) * (grid[1] // down_ratio))
        self.num_heads = num_heads
        self.grid = grid
        self.local = WindowAttention(dim, num_heads, window_size, proj_drop=drop)
        self.gld = nn.Linear(n, m)  # token-axis down-sampling: N tokens -> M summaries
        self.global_norm = nn.LayerNorm(dim, eps=1e-6)
        self.global_attn = Attention(dim, num_heads, qkv_bias=True, proj_drop=drop)
        self.fuse_q = nn.Linear(dim, dim)
        self.fuse_kv = nn.Linear(dim, dim * 2)
        self.fuse_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if tuple(size) != tuple(self.grid):
            raise ValueError(f"MAFAttention was built for a {self.grid} grid, got {size}")
        b, n, c = x.shape
        h, d = self.num_heads, c // self.num_heads
        local = self.local(x, size)
        glob = self.gld(x.transpose(1, 2)).transpose(1, 2)  # (B, M, C)
        glob = glob + self.global_attn(self.global_norm(glob))
        q = self.fuse_q(local).reshape(b, n, h, d).transpose(1, 2)
        kv = self.fuse_kv(glob).reshape(b, -1, 2, h, d).permute(2, 0, 3, 1, 4)
        fused = F.scaled_dot_product_attention(q, kv[0], kv[1])
        return local + self.fuse_proj(fused.transpose(1, 2).reshape(b, n, c))


class MAFBlock(nn.Module):
    def __init__(
        self,
        dim: int,
        num_heads: int,
        grid: tuple[int, int],
        window_size: int,
        down_ratio: int,
        mlp_ratio: float,
        drop: float,
        drop_path: float,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MAFAttention(dim, num_heads, grid, window_size, down_ratio, drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), size))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class MAFStage(nn.Module):
    """Conv embedding (or merging) + LayerNorm, then MAF blocks; NCHW in and out."""

    def __init__(
        self,
        cin: int,
        dim: int,
        kernel: int,
        stride: int,
        grid: tuple[int, int],
        depth: int,
        num_heads: int,
        window_size: int,
        down_ratio: int,
        mlp_ratio: float,
        drop: float,
        dpr: list[float],
    ) -> None:
        super().__init__()
        self.embed = nn.Conv2d(cin, dim, kernel, stride, kernel // 2)
        self.embed_norm = nn.LayerNorm(dim, eps=1e-6)
        self.blocks = nn.ModuleList(
            MAFBlock(dim, num_heads, grid, window_size, down_ratio, mlp_ratio, drop, dpr[j])
            for j in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        b, c, h, w = x.shape
        x = self.embed_norm(x.flatten(2).transpose(1, 2))
        for blk in self.blocks:
            x = blk(x, (h, w))
        return x.transpose(1, 2).reshape(b, c, h, w)


class MAFormer(ImageClassifier):
    """Four-stage pyramid of Multi-scale Attention Fusion blocks."""

    width_args = ("embed_dims",)
    depth_args = ("depths",)

    def __init__(
        self,
        embed_dims: tuple[int, ...] = (64, 128, 256, 512),
        depths: tuple[int, ...] = (1, 2, 21, 1),
        num_heads: tuple[int, ...] = (2, 4, 8, 16),
        window_sizes: tuple[int, ...] = (7, 7, 7, 7),
        down_ratios: tuple[int, ...] = (4, 2, 2, 1),
        mlp_ratio: float = 4.0,
        stem_stride: int = 4,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int | tuple[int, int] = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        n = len(embed_dims)
        if not all(len(t) == n for t in (depths, num_heads, window_sizes, down_ratios)):
            raise ValueError(
                "embed_dims, depths, num_heads, window_sizes and down_ratios need one entry per stage"
            )
        if stem_stride not in (2, 4):
            raise ValueError(f"stem_stride must be 2 or 4, got {stem_stride}")
        size = check_img_size(img_size, stem_stride * 2 ** (n - 1), "MAFormer")
        self.num_classes, self.in_chans = num_classes, in_chans
        self.fixed_input_size = size
        self.img_size_multiple = stem_stride * 2 ** (n - 1)  # the sizes its constructor accepts
        dpr = drop_path_rates(drop_path_rate, depths)
        stages, cin, stride = [], in_chans, 1
        self.feature_info = []
        for i in range(n):
            s = stem_stride if i == 0 else 2
            stride *= s
            kernel = 2 * stem_stride - 1 if i == 0 else 3
            grid = (size[0] // stride, size[1] // stride)
            stages.append(
                MAFStage(
                    cin, embed_dims[i], kernel, s, grid, depths[i], num_heads[i],
                    window_sizes[i], down_ratios[i], mlp_ratio, drop_rate, dpr[i],
                )
            )  # fmt: skip
            self.feature_info.append(FeatureInfo(embed_dims[i], stride, f"stages.{i}"))
            cin = embed_dims[i]
        self.stages = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(cin, eps=1e-6)
        self.num_features = cin
        self.cam_target = f"stages.{n - 1}"
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(cin, num_classes) if num_classes else nn.Identity()
        self.apply(self._init_weights)

    _init_weights = staticmethod(init_trunc_normal_linear)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.norm(x.mean(dim=(2, 3))))
        return x if pre_logits else self.head(x)


_PAPER = "MAFormer: A Transformer Network with Multi-scale Attention Fusion for Visual Recognition"


@register_model(
    ModelCard(
        "maformer",
        _PAPER,
        2022,
        "vit",
        scale="cpu",
        img_size=32,
        notes="3x3/2 stem: grids 16/8/4/2; 4x4 windows; GLD to 4x4, 4x4, 2x2, 2x2 tokens",
    )
)
def maformer_pico(**kwargs: Any) -> MAFormer:
    defaults = dict(
        embed_dims=(32, 64, 128, 160),
        depths=(1, 1, 2, 1),
        num_heads=(1, 2, 4, 4),
        window_sizes=(4, 4, 4, 2),
        down_ratios=(4, 2, 2, 1),
        stem_stride=2,
        img_size=32,
    )
    return build_model(MAFormer, defaults, kwargs)
