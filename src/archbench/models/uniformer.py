"""UniFormer (image classification).

*UniFormer: Unifying Convolution and Self-attention for Visual Recognition* (Li et al.,
2022). Four stages of blocks built from the same three parts: a dynamic position
embedding (a depthwise 3x3 convolution added to the input), a multi-head relation
aggregator (MHRA), and a feed-forward network. In the first two stages the MHRA is
local: BatchNorm, 1x1 conv, a 5x5 depthwise convolution as the token affinity, 1x1
conv (with a 1x1-conv FFN). In the last two stages it is global: LayerNorm and
multi-head self-attention over all tokens (``archbench.layers.Attention``, SDPA), with a
linear FFN. Patch embeddings are non-overlapping convs (4, then 2, 2, 2) + LayerNorm;
the head pools a BatchNorm-ed final map.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..layers import Attention, ConvMlp, DropPath, LayerNorm2d, Mlp, drop_path_rates
from ._base import FeatureInfo, ImageClassifier, check_img_size
from ._registry import ModelCard, build_model, register_model

__all__ = ["UniFormer"]


class LocalMHRABlock(nn.Module):
    """DPE + local MHRA (BN -> 1x1 -> depthwise 5x5 -> 1x1) + conv FFN; NCHW (UniFormer)."""

    def __init__(self, dim: int, mlp_ratio: float, drop: float, drop_path: float, kernel: int = 5):
        super().__init__()
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.BatchNorm2d(dim)
        self.conv1 = nn.Conv2d(dim, dim, 1)
        self.attn = nn.Conv2d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.conv2 = nn.Conv2d(dim, dim, 1)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        x = x + self.drop_path(self.conv2(self.attn(self.conv1(self.norm1(x)))))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class GlobalMHRABlock(nn.Module):
    """DPE + global MHRA (multi-head self-attention) + FFN; NCHW in and out (UniFormer)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        drop: float,
        drop_path: float,
    ) -> None:
        super().__init__()
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        t = t + self.drop_path(self.attn(self.norm1(t)))
        t = t + self.drop_path(self.mlp(self.norm2(t)))
        return t.transpose(1, 2).reshape(b, c, h, w)


class UniFormer(ImageClassifier):
    """Local MHRA in the first ``num_local_stages`` stages, global MHRA after."""

    # head_dim is the width of one attention head: wider stages get more heads
    width_args = ("dims",)
    depth_args = ("depths",)

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int | tuple[int, int] = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        depths: tuple[int, ...] = (3, 4, 8, 3),
        dims: tuple[int, ...] = (64, 128, 320, 512),
        head_dim: int = 64,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        patch_sizes: tuple[int, ...] = (4, 2, 2, 2),
        num_local_stages: int = 2,
    ) -> None:
        super().__init__()
        if not len(depths) == len(dims) == len(patch_sizes):
            raise ValueError("depths, dims and patch_sizes need one entry per stage")
        for d in dims[num_local_stages:]:
            if d % head_dim:
                raise ValueError(f"global-MHRA width {d} is not a multiple of head_dim {head_dim}")
        reduction = 1
        for p in patch_sizes:
            reduction *= p
        check_img_size(img_size, 1, "UniFormer", min_size=reduction)
        self.num_classes, self.in_chans, self.num_features = num_classes, in_chans, dims[-1]
        # patch embeddings drop remainders: any size that reaches the last stage works
        self.min_input_size = reduction
        dprs = drop_path_rates(drop_path_rate, depths)
        stages, cin, red = [], in_chans, 1
        self.feature_info = []
        for i, (depth, dim, p) in enumerate(zip(depths, dims, patch_sizes)):
            layers: list[nn.Module] = [nn.Conv2d(cin, dim, p, p), LayerNorm2d(dim, eps=1e-5)]
            if i == 0:
                layers.append(nn.Dropout(drop_rate))
            for j in range(depth):
                if i < num_local_stages:
                    layers.append(LocalMHRABlock(dim, mlp_ratio, drop_rate, dprs[i][j]))
                else:
                    layers.append(
                        GlobalMHRABlock(
                            dim, dim // head_dim, mlp_ratio, qkv_bias, drop_rate, dprs[i][j]
                        )
                    )
            stages.append(nn.Sequential(*layers))
            red *= p
            self.feature_info.append(FeatureInfo(dim, red, f"stages.{i}"))
            cin = dim
        self.stages = nn.Sequential(*stages)
        self.norm = nn.BatchNorm2d(dims[-1])
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.cam_target = f"stages.{len(dims) - 1}"

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.norm(self.stages(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x.mean(dim=(2, 3)))
        return x if pre_logits else self.head(x)


_PAPER = "UniFormer: Unifying Convolution and Self-attention for Visual Recognition"
_SRC = (
    "Sense-X/UniFormer image_classification README (UniFormer-S: 22M, 3.6G, 82.9). The 22M "
    "is rounded: uniformer_small in the official models/uniformer.py (depths 3-4-8-3, head "
    "dim 64) holds 21.55M parameters, the figure used here"
)


@register_model(
    ModelCard(
        "uniformer", _PAPER, 2022, "hybrid", params_m=21.55, gmacs=3.6, top1=82.9, source=_SRC
    )
)
def uniformer_small(**kwargs: Any) -> UniFormer:
    return build_model(UniFormer, dict(depths=(3, 4, 8, 3)), kwargs)


@register_model(
    ModelCard(
        "uniformer",
        _PAPER,
        2022,
        "hybrid",
        scale="cpu",
        img_size=32,
        notes="patch 2 at every stage: grids 16, 8, 4, 2; local MHRA in stages 1-2",
    )
)
def uniformer_pico(**kwargs: Any) -> UniFormer:
    return build_model(
        UniFormer,
        dict(
            img_size=32,
            depths=(1, 2, 2, 1),
            dims=(32, 64, 128, 192),
            head_dim=32,
            mlp_ratio=3.0,
            patch_sizes=(2, 2, 2, 2),
        ),
        kwargs,
    )
