"""Kolmogorov-Arnold Transformer (KAT).

*Kolmogorov-Arnold Transformer* (Yang & Wang, 2024): a ViT/DeiT whose MLPs are two
group-rational KAN layers (GR-KAN). Each GR-KAN layer applies a rational function
P(x) / (1 + sum_j |b_j| |x|^j) (m = 5, n = 4), as the released kernel computes it: the
numerator shared by all channels, the denominator by each of 8 channel groups; then a
linear map. The first layer's rational starts as the identity and the second's as swish
(the release's ``kat_*_patch16_224`` models; ``rational_init="gelu"`` gives its GELU
variants), and the linear weights use the variance-preserving initialisation
(Var[W] = 1 / (fan_in E[F^2])).
KAT-T/S/B follow DeiT-T/S/B (dims 192/384/768, heads 3/6/12, depth 12, patch 16).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..layers import Attention, DropPath, PatchEmbed
from ..layers.kan import KANLinear
from ._base import FeatureInfo, ImageClassifier
from ._registry import ModelCard, build_model, register_model

__all__ = ["GRKAN", "KAT", "KATBlock"]


class GRKAN(nn.Module):
    """Two GR-KAN layers: rational(identity) -> linear -> rational(``init``) -> linear."""

    def __init__(
        self,
        dim: int,
        hidden: int,
        num_groups: int = 8,
        drop: float = 0.0,
        init: str = "swish",
    ) -> None:
        super().__init__()
        self.fc1 = KANLinear(
            dim, hidden, basis="rational", bias=True, num_groups=num_groups, init="identity"
        )
        self.drop1 = nn.Dropout(drop)
        self.fc2 = KANLinear(
            hidden, dim, basis="rational", bias=True, num_groups=num_groups, init=init
        )
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.fc1(x))))


class KATBlock(nn.Module):
    """Pre-norm transformer block with a GR-KAN in place of the MLP."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        num_groups: int = 8,
        drop: float = 0.0,
        drop_path: float = 0.0,
        rational_init: str = "swish",
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias=True, proj_drop=drop)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = GRKAN(dim, int(dim * mlp_ratio), num_groups, drop, rational_init)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class KAT(ImageClassifier):
    """ViT with class token, learned position embedding and GR-KAN blocks; class-token head."""

    width_args = ("embed_dim",)
    depth_args = ("depth",)
    isotropic = True  # feature_info lists every block

    def __init__(
        self,
        patch_size: int = 16,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        num_groups: int = 8,
        rational_init: str = "swish",
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if embed_dim % num_groups or int(embed_dim * mlp_ratio) % num_groups:
            raise ValueError(
                f"embed_dim ({embed_dim}) and its MLP width must be divisible by num_groups ({num_groups})"
            )
        self.num_classes, self.in_chans = num_classes, in_chans
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.fixed_input_size = self.patch_embed.img_size
        self.img_size_multiple = patch_size  # the sizes its constructor accepts
        self.num_prefix_tokens = 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.Sequential(
            *[
                KATBlock(embed_dim, num_heads, mlp_ratio, num_groups, 0.0, r, rational_init)
                for r in rates
            ]
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.num_features = embed_dim
        self.feature_info = [
            FeatureInfo(embed_dim, patch_size, f"blocks.{i}") for i in range(depth)
        ]
        self.cam_target = f"blocks.{depth - 1}.norm1"
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.blocks(self.pos_drop(x + self.pos_embed))
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x[:, 0])
        return x if pre_logits else self.head(x)


_KAT = "Kolmogorov-Arnold Transformer"
_SRC = "official KAT release README (ImageNet-1k, 224px): params and top-1"


@register_model(ModelCard("kat", _KAT, 2024, "kan", params_m=5.7, top1=74.6, source=_SRC))
def kat_tiny(**kwargs: Any) -> KAT:
    return build_model(KAT, dict(embed_dim=192, num_heads=3), kwargs)


@register_model(ModelCard("kat", _KAT, 2024, "kan", params_m=22.1, top1=81.2, source=_SRC))
def kat_small(**kwargs: Any) -> KAT:
    return build_model(KAT, dict(embed_dim=384, num_heads=6), kwargs)


@register_model(ModelCard("kat", _KAT, 2024, "kan", params_m=86.6, top1=82.3, source=_SRC))
def kat_base(**kwargs: Any) -> KAT:
    return build_model(KAT, dict(embed_dim=768, num_heads=12), kwargs)


@register_model(ModelCard("kat", _KAT, 2024, "kan", scale="cpu", img_size=32))
def kat_pico(**kwargs: Any) -> KAT:
    """Patch 4 (an 8x8 token grid at 32x32), width 64, depth 4, 2 heads, 8 rational groups."""
    return build_model(
        KAT, dict(patch_size=4, embed_dim=64, depth=4, num_heads=2, img_size=32), kwargs
    )
