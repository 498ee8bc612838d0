"""Parallel ViT blocks (*Three things everyone should know about Vision Transformers*, 2022).

A ViT whose residual blocks run ``num_parallel`` attention branches side by side, then
``num_parallel`` MLP branches side by side (official layout: DeiT-III's ``vit_models``
with ``Layer_scale_init_Block_paralx2``):

    x = x + sum_i ls_i * attn_i(norm_i(x))
    x = x + sum_i ls'_i * mlp_i(norm'_i(x))

A "D x K" model (depth D, K parallel branches) has exactly the parameters of the
sequential ViT of the same width and depth D*K; it is wider and shallower, so it runs
with fewer sequential steps. Class token, learned position embedding over the patches
(added before the class token is prepended), LayerScale, final LayerNorm, class-token
head. The position embedding has no class-token slot on purpose: the release's
``vit_models`` (DeiT-III, which the paper's models use) sizes it ``(1, num_patches, dim)``
and adds it to the patch tokens only, unlike the original DeiT. Attention is ``archbench.layers.Attention`` (SDPA).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..layers import Attention, DropPath, LayerScale, Mlp, PatchEmbed, drop_path_rates
from ..layers.helpers import init_trunc_normal_linear
from ..layers.pos_embed import resample_pos_embed
from ._base import FeatureInfo, ImageClassifier, check_img_size
from ._registry import ModelCard, build_model, register_model

__all__ = ["ParallelBlock", "ParallelViT"]


class ParallelBlock(nn.Module):
    """``num_parallel`` pre-norm attention branches, then ``num_parallel`` MLP branches."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_parallel: int = 2,
        mlp_ratio: float = 4.0,
        init_values: float | None = 1e-4,
        drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if num_parallel < 1:
            raise ValueError(f"num_parallel must be >= 1, got {num_parallel}")

        def scale() -> nn.Module:
            return LayerScale(dim, init_values) if init_values else nn.Identity()

        self.attn_norms = nn.ModuleList(nn.LayerNorm(dim, eps=1e-6) for _ in range(num_parallel))
        self.attns = nn.ModuleList(
            Attention(dim, num_heads, qkv_bias=True, proj_drop=drop) for _ in range(num_parallel)
        )
        self.attn_scales = nn.ModuleList(scale() for _ in range(num_parallel))
        self.mlp_norms = nn.ModuleList(nn.LayerNorm(dim, eps=1e-6) for _ in range(num_parallel))
        self.mlps = nn.ModuleList(
            Mlp(dim, int(dim * mlp_ratio), drop=drop) for _ in range(num_parallel)
        )
        self.mlp_scales = nn.ModuleList(scale() for _ in range(num_parallel))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + sum(
            self.drop_path(ls(attn(norm(x))))
            for norm, attn, ls in zip(self.attn_norms, self.attns, self.attn_scales)
        )
        return x + sum(
            self.drop_path(ls(mlp(norm(x))))
            for norm, mlp, ls in zip(self.mlp_norms, self.mlps, self.mlp_scales)
        )


class ParallelViT(ImageClassifier):
    """ViT with parallel residual branches (class token, LayerScale)."""

    width_args = ("embed_dim",)
    depth_args = ("depth",)
    isotropic = True  # feature_info lists every block

    def __init__(
        self,
        embed_dim: int = 384,
        depth: int = 18,
        num_heads: int = 6,
        num_parallel: int = 2,
        mlp_ratio: float = 4.0,
        patch_size: int = 16,
        init_values: float | None = 1e-4,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int | tuple[int, int] = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        size = check_img_size(img_size, patch_size, "ParallelViT")
        self.num_classes, self.in_chans = num_classes, in_chans
        self.fixed_input_size = size
        self.img_size_multiple = patch_size  # the sizes its constructor accepts
        self.num_prefix_tokens = 1
        self.patch_embed = PatchEmbed(size, patch_size, in_chans, embed_dim)
        self.grid_size = self.patch_embed.grid_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches, embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = drop_path_rates(drop_path_rate, [depth])[0]
        self.blocks = nn.Sequential(
            *(
                ParallelBlock(
                    embed_dim, num_heads, num_parallel, mlp_ratio, init_values, drop_rate, dpr[i]
                )
                for i in range(depth)
            )
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.num_features = embed_dim
        self.feature_info = [
            FeatureInfo(embed_dim, patch_size, f"blocks.{i}") for i in range(depth)
        ]
        # the last block's first attention norm: its positions still mix into the class token
        self.cam_target = f"blocks.{depth - 1}.attn_norms.0"
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes else nn.Identity()
        self.apply(self._init_weights)

    _init_weights = staticmethod(init_trunc_normal_linear)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    @staticmethod
    def resize_pos_embed(
        pos_embed: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]
    ) -> torch.Tensor:
        """Bicubically resample a (1, H*W, C) patch position embedding to another grid."""
        return resample_pos_embed(
            pos_embed, new_grid, old_grid, num_prefix_tokens=0, antialias=False
        )

    def load_pos_embed_from(self, pos_embed: torch.Tensor, old_grid: tuple[int, int]) -> None:
        """Copy a position embedding trained on another grid, resampled to this model's."""
        with torch.no_grad():
            self.pos_embed.copy_(self.resize_pos_embed(pos_embed, old_grid, self.grid_size))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.patch_embed(x) + self.pos_embed
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.norm(self.blocks(self.pos_drop(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x[:, 0])
        return x if pre_logits else self.head(x)


_PAPER = "Three things everyone should know about Vision Transformers"
_SRC = (
    "paper Sec. 3 (parallel blocks keep the sequential model's parameters); count of the "
    "equal-width sequential ViT of depth D*K in DeiT-III models_v2 layout (facebookresearch/deit)"
)


@register_model(
    ModelCard(
        "parallel_vit",
        _PAPER,
        2022,
        "vit",
        params_m=64.67,
        source=_SRC,
        notes="ViT-S 18x2: same parameters as the sequential ViT-S 36x1",
    )
)
def parallel_vit_small_18x2(**kwargs: Any) -> ParallelViT:
    return build_model(ParallelViT, {}, kwargs)


@register_model(
    ModelCard(
        "parallel_vit",
        _PAPER,
        2022,
        "vit",
        params_m=43.36,
        source=_SRC,
        notes="ViT-S 12x2: same parameters as the sequential ViT-S 24x1",
    )
)
def parallel_vit_small_12x2(**kwargs: Any) -> ParallelViT:
    return build_model(ParallelViT, dict(depth=12), kwargs)


@register_model(
    ModelCard(
        "parallel_vit",
        _PAPER,
        2022,
        "vit",
        params_m=256.73,
        source=_SRC,
        notes="ViT-B 18x2: same parameters as the sequential ViT-B 36x1",
    )
)
def parallel_vit_base_18x2(**kwargs: Any) -> ParallelViT:
    return build_model(ParallelViT, dict(embed_dim=768, num_heads=12), kwargs)


@register_model(
    ModelCard(
        "parallel_vit",
        _PAPER,
        2022,
        "vit",
        scale="cpu",
        img_size=32,
        notes="patch 4 (8x8 grid), width 96, 3 x 2 parallel branches",
    )
)
def parallel_vit_pico(**kwargs: Any) -> ParallelViT:
    defaults = dict(embed_dim=96, depth=3, num_heads=3, patch_size=4, img_size=32)
    return build_model(ParallelViT, defaults, kwargs)
