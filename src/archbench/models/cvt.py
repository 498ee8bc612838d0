"""CvT: Convolutional vision Transformer.

*CvT: Introducing Convolutions to Vision Transformers* (Wu et al., 2021). Three stages,
each opening with a convolutional token embedding (an overlapping strided convolution
+ LayerNorm on the 2-D map) and stacking transformer blocks whose q/k/v come from a
depthwise-conv + BatchNorm projection (``ConvProjectionAttention``; k and v squeezed with
stride 2). There is no position embedding; a class token joins in the last stage only.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..layers import DropPath, LayerNorm2d, Mlp, drop_path_rates
from ..layers.attention_variants import ConvProjectionAttention
from ._base import FeatureInfo, ImageClassifier, check_img_size, min_side_for_convs
from ._registry import ModelCard, build_model, register_model

__all__ = ["CvT"]


class ConvEmbed(nn.Module):
    """Convolutional token embedding: strided overlapping conv, then LayerNorm (NCHW out)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, padding: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cin, cout, kernel, stride, padding)
        self.norm = LayerNorm2d(cout, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


class ConvTransformerBlock(nn.Module):
    """Pre-norm block with convolutional-projection attention."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        drop: float,
        drop_path: float,
        kv_stride: int,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ConvProjectionAttention(
            dim, dim, num_heads, qkv_bias, kv_stride=kv_stride, proj_drop=drop
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor, hw: tuple[int, int], prefix: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), hw, prefix))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class CvTStage(nn.Module):
    """Conv embedding + blocks. Returns NCHW, or (B, 1 + HW, C) tokens with a class token."""

    def __init__(
        self,
        cin: int,
        dim: int,
        depth: int,
        num_heads: int,
        patch: tuple[int, int, int],
        mlp_ratio: float,
        qkv_bias: bool,
        cls_token: bool,
        drop: float,
        dpr: list[float],
        kv_stride: int,
    ) -> None:
        super().__init__()
        self.embed = ConvEmbed(cin, dim, *patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if cls_token else None
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.pos_drop = nn.Dropout(drop)
        self.blocks = nn.ModuleList(
            ConvTransformerBlock(dim, num_heads, mlp_ratio, qkv_bias, drop, dpr[i], kv_stride)
            for i in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        b, c, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        prefix = 0
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1)
            prefix = 1
        x = self.pos_drop(x)
        for blk in self.blocks:
            x = blk(x, (h, w), prefix)
        if prefix:
            return x
        return x.transpose(1, 2).reshape(b, c, h, w)


class CvT(ImageClassifier):
    """Hierarchical CvT; classification from the last stage's class token."""

    width_args = ("dims",)
    depth_args = ("depths",)

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int | tuple[int, int] = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        dims: tuple[int, ...] = (64, 192, 384),
        depths: tuple[int, ...] = (1, 2, 10),
        num_heads: tuple[int, ...] = (1, 3, 6),
        patch: tuple[tuple[int, int, int], ...] = ((7, 4, 2), (3, 2, 1), (3, 2, 1)),
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        kv_stride: int = 2,
    ) -> None:
        super().__init__()
        if not len(dims) == len(depths) == len(num_heads) == len(patch):
            raise ValueError("dims, depths, num_heads and patch need one entry per stage")
        # padded convolutional embeddings: any size whose every stage grid is not empty
        self.min_input_size = min_side_for_convs(patch)
        check_img_size(img_size, 1, "CvT", min_size=self.min_input_size)
        self.num_classes, self.in_chans, self.num_features = num_classes, in_chans, dims[-1]
        self.num_prefix_tokens = 1
        dprs = drop_path_rates(drop_path_rate, depths)
        stages, cin, red = [], in_chans, 1
        self.feature_info = []
        for i, (d, n, h, p) in enumerate(zip(dims, depths, num_heads, patch)):
            last = i == len(dims) - 1
            stages.append(
                CvTStage(cin, d, n, h, p, mlp_ratio, qkv_bias, last, drop_rate, dprs[i], kv_stride)
            )
            red *= p[1]
            self.feature_info.append(FeatureInfo(d, red, "norm" if last else f"stages.{i}"))
            cin = d
        self.stages = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(dims[-1])
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        # last block's input norm: its patch tokens still reach the class token
        self.cam_target = f"stages.{len(dims) - 1}.blocks.{depths[-1] - 1}.norm1"

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.norm(self.stages(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x[:, 0])
        return x if pre_logits else self.head(x)

    def no_weight_decay(self) -> set[str]:
        return {f"stages.{len(self.stages) - 1}.cls_token"}


_PAPER = "CvT: Introducing Convolutions to Vision Transformers"
_SRC = "microsoft/CvT README (20M / 32M, 4.5 / 7.1 GFLOPs, 81.6 / 82.5 top-1) and configs"
_SRC21 = (
    _SRC + "; the README's 32M is rounded: the released CvT-21 configuration holds "
    "31,622,696 parameters (also listed by the lucid port's docs)"
)


@register_model(
    ModelCard("cvt", _PAPER, 2021, "hybrid", params_m=20.0, gmacs=4.5, top1=81.6, source=_SRC)
)
def cvt_13(**kwargs: Any) -> CvT:
    return build_model(CvT, dict(depths=(1, 2, 10)), kwargs)


@register_model(
    ModelCard("cvt", _PAPER, 2021, "hybrid", params_m=31.62, gmacs=7.1, top1=82.5, source=_SRC21)
)
def cvt_21(**kwargs: Any) -> CvT:
    return build_model(CvT, dict(depths=(1, 4, 16)), kwargs)


@register_model(
    ModelCard(
        "cvt",
        _PAPER,
        2021,
        "hybrid",
        scale="cpu",
        img_size=32,
        notes="embeddings 3x3/s1, 3x3/s2, 3x3/s2: grids 32, 16, 8; k/v squeezed by 2",
    )
)
def cvt_pico(**kwargs: Any) -> CvT:
    return build_model(
        CvT,
        dict(
            img_size=32,
            dims=(32, 64, 128),
            depths=(1, 1, 3),
            num_heads=(1, 2, 4),
            patch=((3, 1, 1), (3, 2, 1), (3, 2, 1)),
            mlp_ratio=3.0,
        ),
        kwargs,
    )
