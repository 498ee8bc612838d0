"""ViR: Vision Retention Networks (Hatamizadeh et al., 2023).

An isotropic ViT whose attention is multi-scale retention (``layers/retention.py``): the
patch sequence plus a class token placed *last*, so that under causal retention it sees
every patch. ``mode`` picks the parallel, recurrent or chunkwise form; all three give the
same outputs (``tests/models/test_vir.py``).

Deviations: the official code and per-variant parameter counts were not released when
this was written, so the ViT-sized variants are ``scale="other"`` (no parameter figure
is claimed) and use ViT's MLP ratio 4 and rotary phases on queries and keys.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..layers import DropPath, Mlp, PatchEmbed, drop_path_rates
from ..layers.helpers import init_trunc_normal_linear
from ..layers.retention import MultiScaleRetention
from ._base import FeatureInfo, ImageClassifier, check_img_size
from ._registry import ModelCard, build_model, register_model

__all__ = ["ViR", "RetentionBlock"]


class RetentionBlock(nn.Module):
    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        mode: str,
        chunk_size: int,
        drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.retention = MultiScaleRetention(dim, num_heads, mode=mode, chunk_size=chunk_size)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(mlp_ratio * dim), drop=drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, mode: str | None = None) -> torch.Tensor:
        x = x + self.drop_path1(self.retention(self.norm1(x), mode))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class ViR(ImageClassifier):
    width_args = ("embed_dim",)
    depth_args = ("depth",)
    isotropic = True  # feature_info lists every block

    def __init__(
        self,
        patch_size: int = 16,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        mode: str = "parallel",
        chunk_size: int = 64,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        size = check_img_size(img_size, patch_size, "ViR")
        self.num_classes, self.in_chans = num_classes, in_chans
        self.fixed_input_size = size
        self.img_size_multiple = patch_size  # the sizes its constructor accepts
        self.num_features = embed_dim
        self.patch_embed = PatchEmbed(size, patch_size, in_chans, embed_dim)
        self.grid_size = self.patch_embed.grid_size
        n = self.patch_embed.num_patches
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, embed_dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = drop_path_rates(drop_path_rate, [depth])[0]
        self.blocks = nn.ModuleList(
            RetentionBlock(embed_dim, num_heads, mlp_ratio, mode, chunk_size, drop_rate, dpr[i])
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        # the class token is last; tokens_to_map drops it
        self.num_prefix_tokens = 0
        self.feature_info = [
            FeatureInfo(embed_dim, patch_size, f"blocks.{i}") for i in range(depth)
        ]
        self.cam_target = f"blocks.{depth - 1}.norm1"  # before the last mixing
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(self._init_weights)

    _init_weights = staticmethod(init_trunc_normal_linear)

    def set_mode(self, mode: str) -> None:
        """Switch every block to the parallel, recurrent or chunkwise form."""
        for blk in self.blocks:
            if mode not in ("parallel", "recurrent", "chunkwise"):
                raise ValueError(f"unknown retention mode {mode!r}")
            blk.retention.mode = mode

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.patch_embed(x)
        x = torch.cat([x, self.cls_token.expand(x.shape[0], -1, -1)], dim=1)
        x = self.pos_drop(x + self.pos_embed)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def tokens_to_map(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.ndim == 4:
            return tokens
        spatial = tokens[:, :-1]  # drop the trailing class token
        h, w = self.grid_size
        return spatial.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x[:, -1])
        return x if pre_logits else self.head(x)


_PAPER = "ViR: Towards Efficient Vision Retention Backbones"
_NOTE = "paper gives no released per-variant parameter count; ViT-sized layout"


@register_model(ModelCard("vir", _PAPER, 2023, "ssm", scale="other", notes=_NOTE))
def vir_small_patch16(**kwargs: Any) -> ViR:
    return build_model(ViR, dict(embed_dim=384, depth=12, num_heads=6), kwargs)


@register_model(ModelCard("vir", _PAPER, 2023, "ssm", scale="other", notes=_NOTE))
def vir_base_patch16(**kwargs: Any) -> ViR:
    return build_model(ViR, dict(embed_dim=768, depth=12, num_heads=12), kwargs)


@register_model(
    ModelCard("vir", _PAPER, 2023, "ssm", scale="cpu", img_size=32, notes="patch 4: 8x8 grid")
)
def vir_pico(**kwargs: Any) -> ViR:
    return build_model(
        ViR, dict(patch_size=4, embed_dim=64, depth=4, num_heads=2, img_size=32), kwargs
    )
