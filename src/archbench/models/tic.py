"""TiC (*TiC: Exploring Vision Transformer in Convolution*, 2024).

A hierarchical network built from MSA-Conv (``archbench.layers.local_attention.MSAConv2d``):
self-attention inside every convolution window followed by the convolution itself, so
the model has no position embedding and accepts any input size. Every block is
``x + GELU(MSA-Conv(BN(x)))`` followed by a 1x1-conv MLP, ``x + MLP(BN(x))``; stages are
joined by a stride-2 MSA-Conv (the generalized convolution down-samples). The two
capacity strategies of the paper are both switched on in every block: the
multi-directional cyclic shift of keys and values (long-distance connections) and
inter-pooling of keys and values (a larger effective receptive field).

Scope: the paper's TiC configurations and parameter counts could not be verified from
a public source (its code release contains only the MSA-Conv operator), so archbench
registers only the CPU-scale variant. The block layout around MSA-Conv and the exact
form of the two capacity strategies are archbench's reading of the paper's description.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..layers import DropPath, drop_path_rates
from ..layers.local_attention import MSAConv2d
from ._base import FeatureInfo, ImageClassifier
from ._registry import ModelCard, build_model, register_model

__all__ = ["TiC", "TiCBlock"]


class TiCBlock(nn.Module):
    def __init__(
        self,
        dim: int,
        num_heads: int,
        kernel_size: int,
        shift: int,
        inter_pool: bool,
        mlp_ratio: float,
        drop_path: float,
    ) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(dim)
        self.msa_conv = MSAConv2d(
            dim, dim, kernel_size, num_heads=num_heads, shift=shift, inter_pool=inter_pool
        )
        self.act = nn.GELU()
        self.norm2 = nn.BatchNorm2d(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Conv2d(dim, hidden, 1), nn.GELU(), nn.Conv2d(hidden, dim, 1))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.act(self.msa_conv(self.norm1(x))))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class TiC(ImageClassifier):
    """Hierarchical vision transformer in convolution (MSA-Conv blocks)."""

    width_args = ("dims",)
    depth_args = ("depths",)

    def __init__(
        self,
        dims: tuple[int, ...] = (64, 128, 256, 512),
        depths: tuple[int, ...] = (2, 2, 6, 2),
        num_heads: tuple[int, ...] = (2, 4, 8, 16),
        kernel_size: int = 3,
        shift: int = 2,
        inter_pool: bool = True,
        mlp_ratio: float = 4.0,
        stem_stride: int = 4,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int | tuple[int, int] = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        n = len(dims)
        if not len(depths) == len(num_heads) == n:
            raise ValueError("dims, depths and num_heads need one entry per stage")
        if stem_stride not in (1, 2, 4):
            raise ValueError(f"stem_stride must be 1, 2 or 4, got {stem_stride}")
        self.num_classes, self.in_chans = num_classes, in_chans
        stem: list[nn.Module] = []
        cin, s = in_chans, stem_stride
        for _ in range(max(1, s.bit_length() - 1)):
            step = 2 if s > 1 else 1
            stem += [nn.Conv2d(cin, dims[0], 3, step, 1, bias=False), nn.BatchNorm2d(dims[0])]
            stem.append(nn.GELU())
            cin, s = dims[0], s // step
        self.stem = nn.Sequential(*stem)
        dpr = drop_path_rates(drop_path_rate, depths)
        stages: list[nn.Module] = []
        self.feature_info = []
        stride = stem_stride
        for i in range(n):
            layers: list[nn.Module] = []
            if i > 0:
                stride *= 2
                layers += [
                    nn.BatchNorm2d(dims[i - 1]),
                    MSAConv2d(dims[i - 1], dims[i], kernel_size, stride=2, num_heads=num_heads[i - 1]),
                ]  # fmt: skip
            layers += [
                TiCBlock(dims[i], num_heads[i], kernel_size, shift, inter_pool, mlp_ratio, dpr[i][j])
                for j in range(depths[i])
            ]  # fmt: skip
            stages.append(nn.Sequential(*layers))
            self.feature_info.append(FeatureInfo(dims[i], stride, f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.BatchNorm2d(dims[-1])
        self.num_features = dims[-1]
        self.cam_target = f"stages.{n - 1}"
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dims[-1], num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.norm(self.stages(self.stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x.mean(dim=(2, 3)))
        return x if pre_logits else self.head(x)


_PAPER = "TiC: Exploring Vision Transformer in Convolution"


@register_model(
    ModelCard(
        "tic",
        _PAPER,
        2024,
        "hybrid",
        scale="cpu",
        img_size=32,
        notes="3x3/2 stem: grids 16/8/4; 3x3 MSA-Conv windows, shift 2, inter-pooling",
    )
)
def tic_pico(**kwargs: Any) -> TiC:
    defaults = dict(
        dims=(32, 64, 128),
        depths=(1, 1, 2),
        num_heads=(1, 2, 4),
        stem_stride=2,
        img_size=32,
    )
    return build_model(TiC, defaults, kwargs)
