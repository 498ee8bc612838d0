"""WideNet (*Go Wider Instead of Deeper*, 2022).

A ViT in which one transformer block (multi-head attention + mixture-of-experts FFN,
``archbench.layers.moe.MoEMlp``) is shared by all ``depth`` layers, while every layer
keeps its own two LayerNorms: the paper's point is that individual norms let a shared
block transform the different semantic levels. Experts: 4, top-2 routing, capacity
factor 1.2, router noise 1/E, load-balancing loss weight 0.01, expert hidden width
4096 (B) as in the official configuration (XueFuzhao/WideNet_Code). The input carries
a constant zero class token (as the release does) and the head averages all tokens.

Training: after a training ``forward``, ``aux_loss()`` returns the load-balancing losses
of every layer's routing, summed and multiplied by ``aux_loss_weight``; the
classification task adds it to the loss.

Deviation: the release's MLPs apply GELU after both dense layers; archbench's experts
are the standard Linear-GELU-Linear. The release's optional tanh representation layer
before the head is left out (with it WideNet-B has 29.7M parameters, without it 29.1M;
the paper reports 29M).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..layers import Attention, DropPath, PatchEmbed
from ..layers.helpers import init_trunc_normal_linear
from ..layers.moe import MoEMlp
from ..layers.pos_embed import resample_pos_embed
from ._base import FeatureInfo, ImageClassifier, check_img_size
from ._registry import ModelCard, build_model, register_model

__all__ = ["WideNet"]


class WideNet(ImageClassifier):
    """ViT with one attention + MoE block shared across depth and per-layer LayerNorms."""

    width_args = ("embed_dim", "moe_hidden")
    depth_args = ("depth",)
    isotropic = True  # feature_info lists every layer

    def __init__(
        self,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        moe_hidden: int = 4096,
        num_experts: int = 4,
        top_k: int = 2,
        capacity_factor: float | None = 1.2,
        aux_loss_weight: float = 0.01,
        patch_size: int = 16,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int | tuple[int, int] = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        size = check_img_size(img_size, patch_size, "WideNet")
        self.num_classes, self.in_chans = num_classes, in_chans
        self.fixed_input_size = size
        self.img_size_multiple = patch_size  # the sizes its constructor accepts
        self.num_prefix_tokens = 1
        self.depth = depth
        self.aux_loss_weight = aux_loss_weight
        self.patch_embed = PatchEmbed(size, patch_size, in_chans, embed_dim)
        self.grid_size = self.patch_embed.grid_size
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(drop_rate)
        # the shared block
        self.attn = Attention(embed_dim, num_heads, qkv_bias=True, proj_drop=drop_rate)
        self.moe = MoEMlp(
            embed_dim, moe_hidden, num_experts, top_k, capacity_factor, drop=drop_rate
        )
        # individual LayerNorms, one pair per layer
        self.norms1 = nn.ModuleList(nn.LayerNorm(embed_dim, eps=1e-6) for _ in range(depth))
        self.norms2 = nn.ModuleList(nn.LayerNorm(embed_dim, eps=1e-6) for _ in range(depth))
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.drop_paths = nn.ModuleList(DropPath(r) if r > 0 else nn.Identity() for r in rates)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.num_features = embed_dim
        # the block is shared, so no module outputs one layer's tokens: an identity per
        # layer marks each output for feature_info (and forward_intermediates' hooks)
        self.layer_outputs = nn.ModuleList(nn.Identity() for _ in range(depth))
        self.feature_info = [
            FeatureInfo(embed_dim, patch_size, f"layer_outputs.{i}") for i in range(depth)
        ]
        self.cam_target = "norm"
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes else nn.Identity()
        self.last_aux_loss: torch.Tensor = torch.zeros(())
        self.apply(self._init_weights)

    _init_weights = staticmethod(init_trunc_normal_linear)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}

    def aux_loss(self, targets: torch.Tensor | None = None) -> torch.Tensor | None:
        """Weighted load-balancing loss of the last training forward pass (None in eval)."""
        return self.last_aux_loss if self.training else None

    @staticmethod
    def resize_pos_embed(
        pos_embed: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]
    ) -> torch.Tensor:
        """Resample a (1, 1 + H*W, C) position embedding; the class-token row is kept."""
        return resample_pos_embed(
            pos_embed, new_grid, old_grid, num_prefix_tokens=1, antialias=False
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.patch_embed(x)
        x = torch.cat([x.new_zeros(x.shape[0], 1, x.shape[-1]), x], dim=1)  # zero class token
        x = self.pos_drop(x + self.pos_embed)
        aux = x.new_zeros(())
        for i in range(self.depth):
            x = x + self.drop_paths[i](self.attn(self.norms1[i](x)))
            x = self.layer_outputs[i](x + self.drop_paths[i](self.moe(self.norms2[i](x))))
            aux = aux + self.moe.aux_loss
        self.last_aux_loss = aux * self.aux_loss_weight
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x.mean(dim=1))
        return x if pre_logits else self.head(x)


_PAPER = "Go Wider Instead of Deeper"
_SRC = (
    "WideNet paper (ImageNet-1K params: B 29M, L 40M; top-1 not verified here); "
    "configuration from the official "
    "release XueFuzhao/WideNet_Code (configs.py, submit_tpu.sh: 4 experts, top-2, cf 1.2)"
)


@register_model(ModelCard("widenet", _PAPER, 2022, "vit", params_m=29.0, source=_SRC))
def widenet_b(**kwargs: Any) -> WideNet:
    return build_model(WideNet, {}, kwargs)


@register_model(ModelCard("widenet", _PAPER, 2022, "vit", params_m=40.0, source=_SRC))
def widenet_l(**kwargs: Any) -> WideNet:
    defaults = dict(embed_dim=1024, depth=24, num_heads=16, moe_hidden=4096)
    return build_model(WideNet, defaults, kwargs)


@register_model(
    ModelCard(
        "widenet",
        _PAPER,
        2022,
        "vit",
        scale="cpu",
        img_size=32,
        notes="patch 4 (8x8 grid), width 96, 6 shared layers, 4 experts top-2",
    )
)
def widenet_pico(**kwargs: Any) -> WideNet:
    defaults = dict(embed_dim=96, depth=6, num_heads=3, moe_hidden=192, patch_size=4, img_size=32)
    return build_model(WideNet, defaults, kwargs)
