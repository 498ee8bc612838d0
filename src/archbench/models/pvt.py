"""Pyramid Vision Transformer (PVT v1).

*Pyramid Vision Transformer: A Versatile Backbone for Dense Prediction without
Convolutions* (Wang et al., 2021). Four stages, each a non-overlapping patch embedding
(stride 4, then 2, 2, 2: the grid halves from stage to stage), a learnt position
embedding, and transformer blocks whose keys and values come from a spatially reduced
grid (``SpatialReductionAttention``, reduction ratios 8, 4, 2, 1). A class token joins in
the last stage. Position embeddings are stored for ``img_size`` and bilinearly resized
for other input sizes, as the official code does for dense prediction.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..layers import DropPath, Mlp, drop_path_rates
from ..layers.attention_variants import SpatialReductionAttention
from ..layers.pos_embed import resample_pos_embed
from ._base import FeatureInfo, ImageClassifier, check_img_size
from ._registry import ModelCard, build_model, register_model

__all__ = ["PyramidVisionTransformer", "resize_pos_embed"]


def resize_pos_embed(pos: torch.Tensor, src: tuple[int, int], dst: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize a (1, H*W, C) grid position embedding from ``src`` to ``dst``."""
    return resample_pos_embed(pos, dst, src, num_prefix_tokens=0, antialias=False, mode="bilinear")


class SRBlock(nn.Module):
    """Pre-norm transformer block with spatial-reduction attention."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        sr_ratio: int,
        qkv_bias: bool,
        drop: float,
        drop_path: float,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SpatialReductionAttention(dim, num_heads, sr_ratio, qkv_bias, proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor, hw: tuple[int, int], prefix: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), hw, prefix))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PVTStage(nn.Module):
    """Patch embedding + position embedding + SR blocks; NCHW out, tokens if class token."""

    def __init__(
        self,
        cin: int,
        dim: int,
        patch: int,
        grid: tuple[int, int],
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        sr_ratio: int,
        qkv_bias: bool,
        cls_token: bool,
        drop: float,
        dpr: list[float],
    ) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cin, dim, patch, patch)
        self.norm = nn.LayerNorm(dim, eps=1e-5)
        self.grid = grid
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if cls_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, grid[0] * grid[1] + int(cls_token), dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.pos_drop = nn.Dropout(drop)
        self.blocks = nn.ModuleList(
            SRBlock(dim, num_heads, mlp_ratio, sr_ratio, qkv_bias, drop, dpr[i])
            for i in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        b, c, h, w = x.shape
        x = self.norm(x.flatten(2).transpose(1, 2))
        prefix = int(self.cls_token is not None)
        pos = resize_pos_embed(self.pos_embed[:, prefix:], self.grid, (h, w))
        x = x + pos
        if prefix:
            cls = self.cls_token + self.pos_embed[:, :1]
            x = torch.cat([cls.expand(b, -1, -1), x], dim=1)
        x = self.pos_drop(x)
        for blk in self.blocks:
            x = blk(x, (h, w), prefix)
        if prefix:
            return x
        return x.transpose(1, 2).reshape(b, c, h, w)


class PyramidVisionTransformer(ImageClassifier):
    """PVT v1 classifier: four SRA stages, class token in the last stage."""

    width_args = ("dims",)
    depth_args = ("depths",)

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int | tuple[int, int] = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        dims: tuple[int, ...] = (64, 128, 320, 512),
        depths: tuple[int, ...] = (2, 2, 2, 2),
        num_heads: tuple[int, ...] = (1, 2, 5, 8),
        mlp_ratios: tuple[float, ...] = (8.0, 8.0, 4.0, 4.0),
        sr_ratios: tuple[int, ...] = (8, 4, 2, 1),
        patch_sizes: tuple[int, ...] = (4, 2, 2, 2),
        qkv_bias: bool = True,
    ) -> None:
        super().__init__()
        n = len(dims)
        if not all(len(t) == n for t in (depths, num_heads, mlp_ratios, sr_ratios, patch_sizes)):
            raise ValueError(
                "dims, depths, num_heads, mlp_ratios, sr_ratios and patch_sizes need one "
                "entry per stage"
            )
        reduction = 1
        for p in patch_sizes:
            reduction *= p
        size = check_img_size(img_size, 1, "PyramidVisionTransformer", min_size=reduction)
        self.num_classes, self.in_chans, self.num_features = num_classes, in_chans, dims[-1]
        self.num_prefix_tokens = 1
        # patch embeddings drop remainders and position embeddings are resized to the
        # grid: any size that reaches the last stage works
        self.min_input_size = reduction
        dprs = drop_path_rates(drop_path_rate, depths)
        stages, cin, red = [], in_chans, 1
        self.feature_info = []
        for i in range(n):
            red *= patch_sizes[i]
            last = i == n - 1
            grid = (size[0] // red, size[1] // red)
            stages.append(
                PVTStage(
                    cin,
                    dims[i],
                    patch_sizes[i],
                    grid,
                    depths[i],
                    num_heads[i],
                    mlp_ratios[i],
                    sr_ratios[i],
                    qkv_bias,
                    last,
                    drop_rate,
                    dprs[i],
                )
            )
            self.feature_info.append(FeatureInfo(dims[i], red, "norm" if last else f"stages.{i}"))
            cin = dims[i]
        self.stages = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        # last block's input norm: its patch tokens still reach the class token
        self.cam_target = f"stages.{n - 1}.blocks.{depths[-1] - 1}.norm1"

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.norm(self.stages(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x[:, 0])
        return x if pre_logits else self.head(x)

    def no_weight_decay(self) -> set[str]:
        names = {f"stages.{i}.pos_embed" for i in range(len(self.stages))}
        return names | {f"stages.{len(self.stages) - 1}.cls_token"}


_PAPER = (
    "Pyramid Vision Transformer: A Versatile Backbone for Dense Prediction without Convolutions"
)
_SRC = "PVT paper Table 2 / whai362/PVT classification README (PVT-Tiny 13.2M, PVT-Small 24.5M)"


@register_model(
    ModelCard("pvt", _PAPER, 2021, "vit", params_m=13.2, gmacs=1.9, top1=75.1, source=_SRC)
)
def pvt_tiny(**kwargs: Any) -> PyramidVisionTransformer:
    return build_model(PyramidVisionTransformer, dict(depths=(2, 2, 2, 2)), kwargs)


@register_model(
    ModelCard("pvt", _PAPER, 2021, "vit", params_m=24.5, gmacs=3.8, top1=79.8, source=_SRC)
)
def pvt_small(**kwargs: Any) -> PyramidVisionTransformer:
    return build_model(PyramidVisionTransformer, dict(depths=(3, 4, 6, 3)), kwargs)


@register_model(
    ModelCard(
        "pvt",
        _PAPER,
        2021,
        "vit",
        scale="cpu",
        img_size=32,
        notes="patch 2 at every stage: grids 16, 8, 4, 2; SR ratios 4, 2, 1, 1",
    )
)
def pvt_pico(**kwargs: Any) -> PyramidVisionTransformer:
    return build_model(
        PyramidVisionTransformer,
        dict(
            img_size=32,
            dims=(32, 64, 128, 192),
            depths=(1, 1, 2, 1),
            num_heads=(1, 2, 4, 6),
            mlp_ratios=(4.0, 4.0, 4.0, 4.0),
            sr_ratios=(4, 2, 1, 1),
            patch_sizes=(2, 2, 2, 2),
        ),
        kwargs,
    )
