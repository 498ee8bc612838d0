"""Tokens-to-Token ViT.

*Tokens-to-Token ViT: Training Vision Transformers from Scratch on ImageNet* (Yuan et
al., 2021). The image is turned into tokens progressively: a soft split (overlapping
unfold) gathers each neighbourhood into one token, a T2T transformer layer
(``TokenProjectionAttention`` + MLP) models the local structure and narrows the width, the
tokens are re-structurized into a grid, and the next soft split shortens the sequence
again. A deep-narrow ViT backbone with a class token and a fixed sinusoidal position
table follows. The canonical variant is T2T-ViT_t-14 (transformer layers in the T2T
module, the variant named in the official release beside the Performer one).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from ..layers import DropPath, Mlp, TransformerBlock, drop_path_rates
from ..layers.attention_variants import TokenProjectionAttention
from ._base import FeatureInfo, ImageClassifier, check_img_size, min_side_for_convs
from ._registry import ModelCard, build_model, register_model

__all__ = ["T2TViT", "sinusoid_table"]


def sinusoid_table(length: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """The fixed sin/cos position table of *Attention Is All You Need*, shape (1, length, dim)."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    i = torch.arange(dim, device=device)
    rate = torch.pow(10000.0, -(2 * (i // 2)).float() / dim)
    angles = pos * rate[None]
    table = torch.where(i % 2 == 0, angles.sin(), angles.cos())
    return table[None]


class T2TLayer(nn.Module):
    """One Tokens-to-Token transformer layer: width changes from ``dim`` to ``out_dim``."""

    def __init__(self, dim: int, out_dim: int, mlp_ratio: float = 1.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = TokenProjectionAttention(dim, out_dim, num_heads=1)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(out_dim)
        self.mlp = Mlp(out_dim, int(out_dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn(self.norm1(x))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class TokensToToken(nn.Module):
    """Soft split -> T2T layer -> re-structurize, repeated; then a linear to ``embed_dim``."""

    def __init__(
        self,
        in_chans: int,
        token_dim: int,
        embed_dim: int,
        splits: tuple[tuple[int, int, int], ...],
    ) -> None:
        super().__init__()
        if len(splits) < 1:
            raise ValueError("t2t_splits needs at least one (kernel, stride, padding) triple")
        self.splits = nn.ModuleList(nn.Unfold(k, padding=p, stride=s) for k, s, p in splits)
        self.split_params = tuple(splits)
        widths = [in_chans] + [token_dim] * (len(splits) - 1)
        self.layers = nn.ModuleList(
            T2TLayer(widths[i] * splits[i][0] ** 2, token_dim) for i in range(len(splits) - 1)
        )
        self.project = nn.Linear(widths[-1] * splits[-1][0] ** 2, embed_dim)

    def grid(self, hw: tuple[int, int]) -> tuple[int, int]:
        h, w = hw
        for k, s, p in self.split_params:
            h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        return h, w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        for i, layer in enumerate(self.layers):
            k, s, p = self.split_params[i]
            x = self.splits[i](x).transpose(1, 2)
            h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
            x = layer(x)
            x = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)
        return self.project(self.splits[-1](x).transpose(1, 2))


class T2TViT(ImageClassifier):
    """T2T module followed by a ViT backbone with a class token and sinusoidal positions."""

    width_args = ("embed_dim", "token_dim")
    depth_args = ("depth",)
    isotropic = True  # feature_info lists every block

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int | tuple[int, int] = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        embed_dim: int = 384,
        depth: int = 14,
        num_heads: int = 6,
        mlp_ratio: float = 3.0,
        qkv_bias: bool = False,
        token_dim: int = 64,
        t2t_splits: tuple[tuple[int, int, int], ...] = ((7, 4, 2), (3, 2, 1), (3, 2, 1)),
    ) -> None:
        super().__init__()
        reduction = math.prod(s for _, s, _ in t2t_splits)
        self.num_classes, self.in_chans, self.num_features = num_classes, in_chans, embed_dim
        self.num_prefix_tokens = 1
        self.tokens_to_token = TokensToToken(in_chans, token_dim, embed_dim, t2t_splits)
        # the soft splits are padded unfolds and the sinusoidal table follows the token
        # count: any size whose token grid is not empty works
        self.min_input_size = min_side_for_convs(t2t_splits)
        size = check_img_size(img_size, 1, "T2TViT", min_size=self.min_input_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        gh, gw = self.tokens_to_token.grid(size)
        # fixed (not learnt) table, rebuilt for other token counts in forward
        self.register_buffer("pos_embed", sinusoid_table(gh * gw + 1, embed_dim), persistent=False)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = drop_path_rates(drop_path_rate, [depth])[0]
        self.blocks = nn.Sequential(
            *(
                TransformerBlock(
                    embed_dim, num_heads, mlp_ratio, qkv_bias, drop_path=dpr[i], norm_eps=1e-5
                )
                for i in range(depth)
            )
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = [FeatureInfo(embed_dim, reduction, f"blocks.{i}") for i in range(depth)]
        # the last block's input norm: its patch tokens still reach the class token
        self.cam_target = f"blocks.{depth - 1}.norm1"
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.tokens_to_token(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        pos = self.pos_embed
        if pos.shape[1] != x.shape[1]:
            pos = sinusoid_table(x.shape[1], x.shape[2], x.device)
        x = self.pos_drop(x + pos.to(x.dtype))
        return self.norm(self.blocks(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x[:, 0])
        return x if pre_logits else self.head(x)

    def no_weight_decay(self) -> set[str]:
        return {"cls_token"}


_PAPER = "Tokens-to-Token ViT: Training Vision Transformers from Scratch on ImageNet"
_SRC = (
    "yitu-opensource/T2T-ViT README (T2T-ViT_t-14: 21.5M, 81.7% top-1, 6.1 GMACs); "
    "mmpretrain configs/t2t_vit/README.md: 21.47M"
)


@register_model(
    ModelCard("t2t_vit", _PAPER, 2021, "vit", params_m=21.47, gmacs=6.1, top1=81.7, source=_SRC)
)
def t2t_vit_t_14(**kwargs: Any) -> T2TViT:
    return build_model(T2TViT, dict(embed_dim=384, depth=14, num_heads=6, mlp_ratio=3.0), kwargs)


@register_model(
    ModelCard("t2t_vit", _PAPER, 2021, "vit", params_m=39.08, gmacs=9.8, top1=82.4, source=_SRC)
)
def t2t_vit_t_19(**kwargs: Any) -> T2TViT:
    return build_model(T2TViT, dict(embed_dim=448, depth=19, num_heads=7, mlp_ratio=3.0), kwargs)


@register_model(
    ModelCard(
        "t2t_vit",
        _PAPER,
        2021,
        "vit",
        scale="cpu",
        img_size=32,
        notes="soft splits (3,1,1),(3,2,1),(3,2,1): an 8x8 token grid at 32x32",
    )
)
def t2t_vit_pico(**kwargs: Any) -> T2TViT:
    return build_model(
        T2TViT,
        dict(
            img_size=32,
            embed_dim=96,
            depth=4,
            num_heads=3,
            mlp_ratio=3.0,
            token_dim=32,
            t2t_splits=((3, 1, 1), (3, 2, 1), (3, 2, 1)),
        ),
        kwargs,
    )
