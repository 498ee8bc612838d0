"""Sliced Recursive Transformer (*Sliced Recursive Transformer*, SReT, 2022).

A three-stage pyramid transformer (convolutional stem of three 3x3/2 conv-BN-ReLU,
a learnable 2-D position embedding, depthwise-conv pooling between stages, average
pool + LayerNorm + linear head, as in the official release). Inside each stage
``recursive_num`` transformer blocks are each applied ``depth / recursive_num``
times (weights shared across depth); every application is followed by its own small
non-linear projection (LN + MLP, unshared) that separates the recursions. Residual
branches carry learnable scalar coefficients. Attention is sliced group
self-attention (``archbench.layers.local_attention.SlicedGroupAttention``): the first
pass of a block uses ``groups1`` slices and the recursive passes ``groups2``, with the
tokens shuffled before slicing in recursive passes.

Deviation: the official code draws a random token permutation in recursive passes
even at inference; archbench uses a fixed strided interleave in eval mode so that
inference is deterministic (training still draws a random permutation).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import DropPath, Mlp
from ..layers.local_attention import SlicedGroupAttention
from ._base import FeatureInfo, ImageClassifier, check_img_size
from ._registry import ModelCard, build_model, register_model

__all__ = ["SReT"]


class Coefficient(nn.Module):
    """A learnable scalar multiplier, initialised at 1 (SReT's residual coefficients)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


class SReTBlock(nn.Module):
    """c1 * x + c2 * attn(LN x), then c3 * x + c4 * mlp(LN x)."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float, drop: float, drop_path: float
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SlicedGroupAttention(dim, num_heads, qkv_bias=True, proj_drop=drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.c1, self.c2, self.c3, self.c4 = (
            Coefficient(),
            Coefficient(),
            Coefficient(),
            Coefficient(),
        )

    def forward(self, x: torch.Tensor, num_groups: int, shuffle: bool) -> torch.Tensor:
        x = self.c1(x) + self.c2(self.drop_path(self.attn(self.norm1(x), num_groups, shuffle)))
        return self.c3(x) + self.c4(self.drop_path(self.mlp(self.norm2(x))))


class NonLinearProjection(nn.Module):
    """c1 * x + c2 * mlp(LN x): the unshared layer between two recursions."""

    def __init__(self, dim: int, mlp_ratio: float, drop: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.c1, self.c2 = Coefficient(), Coefficient()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c1(x) + self.c2(self.mlp(self.norm(x)))


class RecursiveStage(nn.Module):
    """``recursive_num`` shared blocks, each applied ``loops`` times; NCHW in and out."""

    def __init__(
        self,
        dim: int,
        depth: int,
        recursive_num: int,
        num_heads: int,
        groups1: int,
        groups2: int,
        mlp_ratio: float,
        np_mlp_ratio: float,
        drop: float,
        dpr: list[float],
    ) -> None:
        super().__init__()
        if recursive_num < 1 or depth % recursive_num:
            raise ValueError(f"recursive_num {recursive_num} must divide the stage depth {depth}")
        self.loops = depth // recursive_num
        self.groups1, self.groups2 = groups1, groups2
        self.blocks = nn.ModuleList(
            SReTBlock(dim, num_heads, mlp_ratio, drop, dpr[r * self.loops])
            for r in range(recursive_num)
        )
        self.projections = nn.ModuleList(
            NonLinearProjection(dim, np_mlp_ratio, drop) for _ in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        step = 0
        for block in self.blocks:
            for loop in range(self.loops):
                recursive = loop > 0
                groups = self.groups2 if recursive else self.groups1
                x = block(x, groups, shuffle=recursive)
                x = self.projections[step](x)
                step += 1
        return x.transpose(1, 2).reshape(b, c, h, w)


def _conv_bn_relu(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SReT(ImageClassifier):
    """SReT: recursive weight-shared blocks with sliced group self-attention."""

    # stage width is base_dims x num_heads; recursive_num must keep dividing depths
    width_args = ("base_dims",)
    depth_args = ("depths", "recursive_num")

    def __init__(
        self,
        base_dims: tuple[int, ...] = (32, 32, 32),
        num_heads: tuple[int, ...] = (2, 4, 8),
        depths: tuple[int, ...] = (4, 10, 6),
        recursive_num: tuple[int, ...] = (2, 5, 3),
        groups1: tuple[int, ...] = (8, 4, 1),
        groups2: tuple[int, ...] = (2, 1, 1),
        mlp_ratio: float = 3.6,
        np_mlp_ratio: float = 1.0,
        stem_strides: tuple[int, int, int] = (2, 2, 2),
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int | tuple[int, int] = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        n = len(depths)
        if not all(len(t) == n for t in (base_dims, num_heads, recursive_num, groups1, groups2)):
            raise ValueError(
                "base_dims, num_heads, depths, recursive_num, groups1 and groups2 need one entry per stage"
            )
        if any(s not in (1, 2) for s in stem_strides) or len(stem_strides) != 3:
            raise ValueError(f"stem_strides must be three values in (1, 2), got {stem_strides}")
        stem_stride = stem_strides[0] * stem_strides[1] * stem_strides[2]
        size = check_img_size(img_size, stem_stride * 2 ** (n - 1), "SReT")
        self.num_classes, self.in_chans = num_classes, in_chans
        self.fixed_input_size = size
        self.img_size_multiple = stem_stride * 2 ** (n - 1)  # the sizes its constructor accepts
        dims = [b * h for b, h in zip(base_dims, num_heads)]
        self.stem = nn.Sequential(
            *_conv_bn_relu(in_chans, dims[0] // 2, stem_strides[0]),
            *_conv_bn_relu(dims[0] // 2, dims[0], stem_strides[1]),
            *_conv_bn_relu(dims[0], dims[0], stem_strides[2]),
        )
        grid = (size[0] // stem_stride, size[1] // stem_stride)
        self.pos_embed = nn.Parameter(torch.zeros(1, dims[0], *grid))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(drop_rate)
        total = sum(depths)
        layers: list[nn.Module] = []
        self.feature_info = []
        start, reduction = 0, stem_stride
        for i in range(n):
            dpr = [drop_path_rate * (start + j) / total for j in range(depths[i])]
            start += depths[i]
            if i > 0:
                reduction *= 2
                layers.append(nn.Conv2d(dims[i - 1], dims[i], 3, 2, 1, groups=dims[i - 1]))
            layers.append(
                RecursiveStage(
                    dims[i],
                    depths[i],
                    recursive_num[i],
                    num_heads[i],
                    groups1[i],
                    groups2[i],
                    mlp_ratio,
                    np_mlp_ratio,
                    drop_rate,
                    dpr,
                )
            )
            self.feature_info.append(FeatureInfo(dims[i], reduction, f"stages.{len(layers) - 1}"))
        self.stages = nn.Sequential(*layers)
        self.num_features = dims[-1]
        self.cam_target = self.feature_info[-1].module
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dims[-1], num_classes) if num_classes else nn.Identity()

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}

    @staticmethod
    def resize_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Bilinearly resample a (1, C, H, W) position embedding to a new grid."""
        if tuple(pos_embed.shape[-2:]) == tuple(grid):
            return pos_embed
        return F.interpolate(pos_embed, size=grid, mode="bilinear", align_corners=False)

    def load_pos_embed_from(self, pos_embed: torch.Tensor) -> None:
        """Copy a position embedding trained at another resolution, resampled to this grid."""
        with torch.no_grad():
            self.pos_embed.copy_(self.resize_pos_embed(pos_embed, tuple(self.pos_embed.shape[-2:])))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.pos_drop(self.stem(x) + self.pos_embed)
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.norm(x.mean(dim=(2, 3))))
        return x if pre_logits else self.head(x)


_PAPER = "Sliced Recursive Transformer"
_SRC = "SReT official release szq0214/SReT (README model table; SReT.py configurations)"


@register_model(
    ModelCard(
        "sret",
        _PAPER,
        2022,
        "vit",
        params_m=4.756,
        gmacs=1.1,
        top1=76.0,
        source=_SRC,
        notes="reported as 4.8M (rounded); 4.756M is the exact count of the official SReT_T config",
    )
)
def sret_t(**kwargs: Any) -> SReT:
    return build_model(SReT, {}, kwargs)


@register_model(
    ModelCard("sret", _PAPER, 2022, "vit", params_m=20.9, gmacs=4.2, top1=81.9, source=_SRC)
)
def sret_s(**kwargs: Any) -> SReT:
    defaults = dict(base_dims=(42, 42, 42), num_heads=(3, 6, 12), mlp_ratio=3.0, np_mlp_ratio=2.0)
    return build_model(SReT, defaults, kwargs)


@register_model(
    ModelCard(
        "sret",
        _PAPER,
        2022,
        "vit",
        scale="cpu",
        img_size=32,
        notes="stem stride 2 (3x3/2, 3x3/1, 3x3/1): grids 16/8/4; groups 4-2-1 then 2-1-1",
    )
)
def sret_pico(**kwargs: Any) -> SReT:
    defaults = dict(
        base_dims=(16, 16, 16),
        num_heads=(2, 4, 8),
        depths=(2, 2, 2),
        recursive_num=(1, 1, 1),
        groups1=(4, 2, 1),
        groups2=(2, 1, 1),
        mlp_ratio=2.0,
        stem_strides=(2, 1, 1),
        img_size=32,
    )
    return build_model(SReT, defaults, kwargs)
