"""CrossViT.

*CrossViT: Cross-Attention Multi-Scale Vision Transformer for Image Classification*
(Chen, Fan and Panda, 2021). Two ViT branches see the image at two patch sizes: a
small-patch branch (fine grid, narrow) and a large-patch branch (coarse grid, wide, more
blocks). After every multi-scale encoder the branches exchange information through
cross-attention fusion: each branch's CLS token is projected to the other branch's width,
queries that branch's patch tokens (``ClassAttention``), and is projected back. The two
CLS tokens are classified by one head each and the logits averaged.

As in the paper, the large-patch branch sees the image resized by ``img_scale`` (224/240
for the 240-pixel canonical models) so that both grids are whole. ``forward_features``
returns the two normalized CLS tokens concatenated (B, C_small + C_large), the only
features the head uses; ``feature_info`` lists each branch's final token map.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import DropPath, PatchEmbed, TransformerBlock, drop_path_rates
from ..layers.attention_variants import ClassAttention
from ._base import FeatureInfo, ImageClassifier, nearest_sides, to_2tuple
from ._registry import ModelCard, build_model, register_model

__all__ = ["CrossAttentionFusion", "CrossViT"]


def _projection(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(cin, eps=1e-6), nn.GELU(), nn.Linear(cin, cout))


class CrossAttentionFusion(nn.Module):
    """Fuse the CLS token of branch ``a`` with the patch tokens of branch ``b`` (CrossViT).

    f(CLS_a) queries [f(CLS_a), patches_b] in b's width, the result goes back through g.
    """

    def __init__(self, dim_a: int, dim_b: int, num_heads: int, drop_path: float = 0.0):
        super().__init__()
        self.proj = _projection(dim_a, dim_b)
        self.norm = nn.LayerNorm(dim_b, eps=1e-6)
        self.attn = ClassAttention(dim_b, num_heads, qkv_bias=True)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.revert = _projection(dim_b, dim_a)

    def forward(self, cls_a: torch.Tensor, patches_b: torch.Tensor) -> torch.Tensor:
        q = self.proj(cls_a)
        seq = torch.cat([q, patches_b], dim=1)
        fused = q + self.drop_path(self.attn(self.norm(seq)))
        return self.revert(fused)


class MultiScaleBlock(nn.Module):
    """Per-branch transformer blocks, then cross-attention fusion of the CLS tokens."""

    def __init__(
        self,
        dims: tuple[int, int],
        depths: tuple[int, int],
        num_heads: tuple[int, int],
        mlp_ratio: tuple[float, float],
        drop: float,
        drop_paths: list[float],
    ) -> None:
        super().__init__()
        branches, i = [], 0
        for b in range(2):
            blocks = []
            for _ in range(depths[b]):
                blocks.append(
                    TransformerBlock(
                        dims[b],
                        num_heads[b],
                        mlp_ratio[b],
                        True,
                        drop=drop,
                        drop_path=drop_paths[i],
                    )
                )
                i += 1
            branches.append(nn.Sequential(*blocks))
        self.branches = nn.ModuleList(branches)
        last = drop_paths[-1]
        self.fusion = nn.ModuleList(
            CrossAttentionFusion(dims[b], dims[1 - b], num_heads[1 - b], last) for b in range(2)
        )

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        outs = [branch(x) for branch, x in zip(self.branches, xs)]
        fused = []
        for b in range(2):
            cls = self.fusion[b](outs[b][:, :1], outs[1 - b][:, 1:])
            fused.append(torch.cat([cls, outs[b][:, 1:]], dim=1))
        return fused


class CrossViT(ImageClassifier):
    """Dual-branch ViT with CLS-token cross-attention fusion."""

    width_args = ("embed_dim",)
    depth_args = ("depth",)

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 240,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        patch_size: tuple[int, int] = (12, 16),
        embed_dim: tuple[int, int] = (192, 384),
        depth: tuple[tuple[int, int], ...] = ((1, 4), (1, 4), (1, 4)),
        num_heads: tuple[int, int] = (6, 6),
        mlp_ratio: tuple[float, float] = (4.0, 4.0),
        img_scale: tuple[float, float] = (1.0, 224 / 240),
    ) -> None:
        super().__init__()
        if len(patch_size) != 2 or len(embed_dim) != 2 or len(num_heads) != 2:
            raise ValueError(
                "CrossViT has two branches: give patch_size, embed_dim and "
                "num_heads as pairs (small patches first)"
            )
        if patch_size[0] >= patch_size[1]:
            raise ValueError(f"patch_size must be (small, large), got {patch_size}")
        side = to_2tuple(img_size)[0]
        sizes = [int(side * s) for s in img_scale]
        self.img_scale, self.patch_size = tuple(img_scale), tuple(patch_size)
        for s, p in zip(sizes, patch_size):
            if s <= 0 or s % p:
                near = " or ".join(str(v) for v in nearest_sides(side, self.img_size_ok) if v)
                raise ValueError(
                    f"CrossViT: branch image size {s} (img_size {img_size} x img_scale) must be "
                    f"a multiple of its patch size {p} (nearest valid img_size: {near})"
                )
        self.num_classes, self.in_chans = num_classes, in_chans
        self.num_features = embed_dim[0] + embed_dim[1]
        self.num_prefix_tokens = 1
        self.fixed_input_size = (side, side)
        self.branch_sizes = sizes
        self.embed_dim = tuple(embed_dim)
        self.patch_embed = nn.ModuleList(
            PatchEmbed(s, p, in_chans, d) for s, p, d in zip(sizes, patch_size, embed_dim)
        )
        self.cls_token = nn.ParameterList(nn.Parameter(torch.zeros(1, 1, d)) for d in embed_dim)
        self.pos_embed = nn.ParameterList(
            nn.Parameter(torch.zeros(1, 1 + pe.num_patches, d))
            for pe, d in zip(self.patch_embed, embed_dim)
        )
        self.pos_drop = nn.Dropout(drop_rate)
        per_block = [sum(d) + 1 for d in depth]  # branch blocks, then the fusion
        dprs = drop_path_rates(drop_path_rate, per_block)
        self.blocks = nn.Sequential(
            *(
                MultiScaleBlock(embed_dim, d, num_heads, mlp_ratio, drop_rate, dpr)
                for d, dpr in zip(depth, dprs)
            )
        )
        self.norms = nn.ModuleList(nn.LayerNorm(d, eps=1e-6) for d in embed_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.heads = self._make_heads(num_classes)
        self.feature_info = [
            FeatureInfo(d, round(side / pe.grid_size[0]), f"norms.{i}")
            for i, (d, pe) in enumerate(zip(embed_dim, self.patch_embed))
        ]
        # small-patch branch, last block's input norm: its patches still reach its CLS token
        self.cam_target = f"blocks.{len(depth) - 1}.branches.0.{depth[-1][0] - 1}.norm1"
        for p in (*self.cls_token, *self.pos_embed):
            nn.init.trunc_normal_(p, std=0.02)

    def _make_heads(self, num_classes: int) -> nn.ModuleList:
        return nn.ModuleList(
            nn.Linear(d, num_classes) if num_classes > 0 else nn.Identity() for d in self.embed_dim
        )

    def get_classifier(self) -> nn.Module:
        return self.heads

    def img_size_ok(self, side: int) -> bool:
        """Whether both branches' image sizes (side x img_scale) tile into their patches."""
        sizes = [int(side * s) for s in self.img_scale]
        return all(s > 0 and s % p == 0 for s, p in zip(sizes, self.patch_size))

    def reset_classifier(self, num_classes: int) -> None:
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        self.num_classes = num_classes
        self.heads = self._make_heads(num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        xs = []
        for i, pe in enumerate(self.patch_embed):
            xi = x
            if x.shape[-1] != self.branch_sizes[i]:
                size = (self.branch_sizes[i], self.branch_sizes[i])
                xi = F.interpolate(x, size=size, mode="bicubic", align_corners=False)
            t = pe(xi)
            t = torch.cat([self.cls_token[i].expand(t.shape[0], -1, -1), t], dim=1)
            xs.append(self.pos_drop(t + self.pos_embed[i]))
        for block in self.blocks:
            xs = block(xs)
        return torch.cat([norm(t)[:, 0] for norm, t in zip(self.norms, xs)], dim=1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x)
        if pre_logits or self.num_classes == 0:
            return x
        parts = x.split(list(self.embed_dim), dim=1)
        return torch.stack([h(p) for h, p in zip(self.heads, parts)]).mean(0)

    def no_weight_decay(self) -> set[str]:
        return {"cls_token.0", "cls_token.1", "pos_embed.0", "pos_embed.1"}


_PAPER = "CrossViT: Cross-Attention Multi-Scale Vision Transformer for Image Classification"
_SRC = (
    "IBM/CrossViT release configs; paper Table 3 / PaddleViT model zoo list 6.9M (Ti) and "
    "26.7M (S), counts that leave out the learnable position embeddings (76K / 153K): "
    "with them the released models hold 7.01M / 26.86M, the figure used here"
)


@register_model(
    ModelCard(
        "crossvit",
        _PAPER,
        2021,
        "vit",
        params_m=7.01,
        gmacs=1.6,
        top1=73.4,
        img_size=240,
        source=_SRC,
    )
)
def crossvit_tiny_240(**kwargs: Any) -> CrossViT:
    return build_model(
        CrossViT, dict(embed_dim=(96, 192), num_heads=(3, 3), mlp_ratio=(4.0, 4.0)), kwargs
    )


@register_model(
    ModelCard(
        "crossvit",
        _PAPER,
        2021,
        "vit",
        params_m=26.86,
        gmacs=5.6,
        top1=81.0,
        img_size=240,
        source=_SRC,
    )
)
def crossvit_small_240(**kwargs: Any) -> CrossViT:
    return build_model(
        CrossViT, dict(embed_dim=(192, 384), num_heads=(6, 6), mlp_ratio=(4.0, 4.0)), kwargs
    )


@register_model(
    ModelCard(
        "crossvit",
        _PAPER,
        2021,
        "vit",
        scale="cpu",
        img_size=32,
        notes="patches 4 and 8 (8x8 and 4x4 grids), no resizing of the large branch",
    )
)
def crossvit_pico(**kwargs: Any) -> CrossViT:
    return build_model(
        CrossViT,
        dict(
            img_size=32,
            patch_size=(4, 8),
            embed_dim=(48, 96),
            num_heads=(2, 4),
            mlp_ratio=(3.0, 3.0),
            depth=((1, 2), (1, 2)),
            img_scale=(1.0, 1.0),
        ),
        kwargs,
    )
