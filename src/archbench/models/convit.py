"""ConViT.

*ConViT: Improving Vision Transformers with Soft Convolutional Inductive Biases*
(d'Ascoli et al., 2021). A DeiT whose first ``local_up_to_layer`` blocks use gated
positional self-attention (``GatedPositionalSelfAttention``): each head blends content
attention with a learnt positional attention over relative offsets, initialised to attend
like a convolution kernel, with a per-head gate that lets it move toward content. The
class token joins only after the GPSA blocks; the remaining blocks are plain MHSA.
Learnt absolute position embeddings are stored for ``img_size`` and bilinearly resized
for other inputs.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from ..layers import Attention, DropPath, Mlp, PatchEmbed, drop_path_rates
from ..layers.attention_variants import GatedPositionalSelfAttention
from ._base import FeatureInfo, ImageClassifier, to_2tuple
from ._registry import ModelCard, build_model, register_model
from .pvt import resize_pos_embed

__all__ = ["ConViT"]


class ConViTBlock(nn.Module):
    """Pre-norm block with GPSA (needs the grid) or plain MHSA."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        drop: float,
        drop_path: float,
        gpsa: bool,
        locality_strength: float,
    ) -> None:
        super().__init__()
        self.gpsa = gpsa
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        if gpsa:
            self.attn: nn.Module = GatedPositionalSelfAttention(
                dim, num_heads, qkv_bias, proj_drop=drop, locality_strength=locality_strength
            )
        else:
            self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        y = self.norm1(x)
        y = self.attn(y, hw) if self.gpsa else self.attn(y)
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ConViT(ImageClassifier):
    """DeiT with gated positional self-attention in its first blocks."""

    width_args = ("embed_dim",)
    depth_args = ("depth",)
    isotropic = True  # feature_info lists every block

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int | tuple[int, int] = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        patch_size: int = 16,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        local_up_to_layer: int = 10,
        locality_strength: float = 1.0,
    ) -> None:
        super().__init__()
        if not 0 <= local_up_to_layer <= depth:
            raise ValueError(
                f"local_up_to_layer must be in [0, depth={depth}], got {local_up_to_layer}"
            )
        size = to_2tuple(img_size)
        self.num_classes, self.in_chans, self.num_features = num_classes, in_chans, embed_dim
        self.num_prefix_tokens = 1
        self.input_multiple = patch_size
        self.local_up_to_layer = local_up_to_layer
        self.patch_embed = PatchEmbed(size, patch_size, in_chans, embed_dim, strict_size=False)
        self.grid = self.patch_embed.grid_size
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches, embed_dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = drop_path_rates(drop_path_rate, [depth])[0]
        self.blocks = nn.ModuleList(
            ConViTBlock(
                embed_dim,
                num_heads,
                mlp_ratio,
                qkv_bias,
                drop_rate,
                dpr[i],
                i < local_up_to_layer,
                locality_strength,
            )
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        # one entry per block; GPSA block outputs carry no class token (it joins later)
        self.feature_info = [
            FeatureInfo(embed_dim, patch_size, f"blocks.{i}") for i in range(depth)
        ]
        self.cam_target = f"blocks.{depth - 1}.norm1"  # patch tokens still reach the class token

    def tokens_to_map(self, tokens: torch.Tensor) -> torch.Tensor:
        # GPSA block outputs carry no class token
        if tokens.ndim == 3 and math.isqrt(tokens.shape[1]) ** 2 == tokens.shape[1]:
            side = math.isqrt(tokens.shape[1])
            return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, side, side)
        return super().tokens_to_map(tokens)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        p = self.patch_embed.patch_size
        hw = (x.shape[-2] // p[0], x.shape[-1] // p[1])
        x = self.patch_embed(x)
        x = self.pos_drop(x + resize_pos_embed(self.pos_embed, self.grid, hw))
        for i, blk in enumerate(self.blocks):
            if i == self.local_up_to_layer:
                x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
            x = blk(x, hw)
        if self.local_up_to_layer == len(self.blocks):
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x[:, 0])
        return x if pre_logits else self.head(x)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}


_PAPER = "ConViT: Improving Vision Transformers with Soft Convolutional Inductive Biases"
_SRC = (
    "paper Table 1 (Ti: 6M, 1G, 73.1; S: 27M, 5.4G, 81.3; counts rounded); exact counts of "
    "the released facebookresearch/convit models: 5.71M (mindcv configs/convit README) and "
    "27.78M (timm convit_small.fb_in1k: 111 MB of float32 weights; same code as Ti with 9 "
    "heads of 48)"
)


@register_model(
    ModelCard("convit", _PAPER, 2021, "vit", params_m=5.71, gmacs=1.0, top1=73.1, source=_SRC)
)
def convit_tiny(**kwargs: Any) -> ConViT:
    return build_model(ConViT, dict(embed_dim=192, num_heads=4), kwargs)


@register_model(
    ModelCard("convit", _PAPER, 2021, "vit", params_m=27.78, gmacs=5.4, top1=81.3, source=_SRC)
)
def convit_small(**kwargs: Any) -> ConViT:
    return build_model(ConViT, dict(embed_dim=432, num_heads=9), kwargs)


@register_model(
    ModelCard(
        "convit",
        _PAPER,
        2021,
        "vit",
        scale="cpu",
        img_size=32,
        notes="patch 4: an 8x8 grid; 4 GPSA blocks then 2 MHSA blocks",
    )
)
def convit_pico(**kwargs: Any) -> ConViT:
    return build_model(
        ConViT,
        dict(
            img_size=32,
            patch_size=4,
            embed_dim=96,
            depth=6,
            num_heads=4,
            mlp_ratio=3.0,
            local_up_to_layer=4,
        ),
        kwargs,
    )
