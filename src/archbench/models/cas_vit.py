"""CAS-ViT: Convolutional Additive Self-attention Vision Transformers.

*CAS-ViT: Convolutional Additive Self-attention Vision Transformers for Efficient Mobile
Applications* (Zhang et al., 2024). A two-conv stem (stride 4), then four stages joined by
strided 3x3 conv + BatchNorm embeddings. Every block is all-convolutional: a local
integration branch (1x1 conv, BN, depthwise 3x3, GELU, 1x1 conv), the convolutional
additive token mixer (``ConvolutionalAdditiveAttention``) after BatchNorm, and a 1x1-conv
MLP after BatchNorm, each residual. The released classifiers carry a second
(distillation) linear head beside the class head, DeiT-style, and their published
parameter counts include it. The official code returns both logits in training and their
mean in eval; here the mean is returned in both modes (one output, as the model contract
wants; a distillation loss can still read ``head`` and ``dist_head``), and
``distillation=False`` drops the second head.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..layers import ConvMlp, DropPath, drop_path_rates
from ..layers.attention_variants import ConvolutionalAdditiveAttention
from ._base import FeatureInfo, ImageClassifier, check_img_size
from ._registry import ModelCard, build_model, register_model

__all__ = ["CASViT"]


class LocalIntegration(nn.Module):
    """1x1 conv -> BN -> depthwise 3x3 -> GELU -> 1x1 conv (CAS-ViT)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.network = nn.Sequential(
            nn.Conv2d(dim, dim, 1),
            nn.BatchNorm2d(dim),
            nn.Conv2d(dim, dim, 3, 1, 1, groups=dim),
            nn.GELU(),
            nn.Conv2d(dim, dim, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)


class AdditiveBlock(nn.Module):
    """Local integration, then BN + CATM, then BN + conv MLP; all residual."""

    def __init__(self, dim: int, mlp_ratio: float, drop: float, drop_path: float) -> None:
        super().__init__()
        self.local_perception = LocalIntegration(dim)
        self.norm1 = nn.BatchNorm2d(dim)
        self.attn = ConvolutionalAdditiveAttention(dim, proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.local_perception(x)
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class CASViT(ImageClassifier):
    """CAS-ViT classifier (RCViT in the official code)."""

    width_args = ("dims",)
    depth_args = ("depths",)

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int | tuple[int, int] = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        dims: tuple[int, ...] = (48, 56, 112, 220),
        depths: tuple[int, ...] = (2, 2, 4, 2),
        mlp_ratio: float = 4.0,
        stem_stride: int = 4,
        distillation: bool = True,
    ) -> None:
        super().__init__()
        n = len(dims)
        if len(depths) != n:
            raise ValueError("dims and depths need one entry per stage")
        if stem_stride not in (1, 2, 4):
            raise ValueError(f"stem_stride must be 1, 2 or 4, got {stem_stride}")
        check_img_size(img_size, 1, "CASViT")
        self.num_classes, self.in_chans, self.num_features = num_classes, in_chans, dims[-1]
        # padded strided layers map any input size onto the stages: no size constraint
        half = dims[0] // 2
        s1, s2 = {1: (1, 1), 2: (2, 1), 4: (2, 2)}[stem_stride]
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, half, 3, s1, 1), nn.BatchNorm2d(half), nn.ReLU(),
            nn.Conv2d(half, dims[0], 3, s2, 1), nn.BatchNorm2d(dims[0]), nn.ReLU(),
        )  # fmt: skip
        dprs = drop_path_rates(drop_path_rate, depths)
        stages, red = [], stem_stride
        self.feature_info = []
        for i in range(n):
            layers: list[nn.Module] = []
            if i:
                layers += [nn.Conv2d(dims[i - 1], dims[i], 3, 2, 1), nn.BatchNorm2d(dims[i])]
                red *= 2
            layers += [
                AdditiveBlock(dims[i], mlp_ratio, drop_rate, dprs[i][j]) for j in range(depths[i])
            ]
            stages.append(nn.Sequential(*layers))
            self.feature_info.append(FeatureInfo(dims[i], red, f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.BatchNorm2d(dims[-1])
        self.head_drop = nn.Dropout(drop_rate)
        self.distillation = distillation
        self.head, self.dist_head = self._heads(num_classes)
        self.cam_target = f"stages.{n - 1}"

    def _heads(self, num_classes: int) -> tuple[nn.Module, nn.Module]:
        def make() -> nn.Module:
            return nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

        return make(), (make() if self.distillation and num_classes > 0 else nn.Identity())

    def reset_classifier(self, num_classes: int) -> None:
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        self.num_classes = num_classes
        self.head, self.dist_head = self._heads(num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.norm(self.stages(self.stem(x)))

    def forward_distill(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(class-head logits, distillation-head logits)`` of images ``x``."""
        if isinstance(self.dist_head, nn.Identity):
            raise ValueError(
                f"{type(self).__name__} was built with distillation=False (or no classes): "
                "it has no distillation head"
            )
        pooled = self.head_drop(self.forward_features(x).mean(dim=(2, 3)))
        return self.head(pooled), self.dist_head(pooled)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x.mean(dim=(2, 3)))
        if pre_logits or self.num_classes == 0:
            return x
        if isinstance(self.dist_head, nn.Identity):
            return self.head(x)
        return (self.head(x) + self.dist_head(x)) / 2


_PAPER = "CAS-ViT: Convolutional Additive Self-attention Vision Transformers for Efficient Mobile Applications"
_SRC = (
    "Tianfang-Zhang/CAS-ViT MODEL_ZOO.md (params 3.20 / 5.76 / 12.42 / 21.76M; top-1 "
    "78.3 / 80.9 / 82.8 / 83.9, the first of each listed pair) and classification/model/rcvit.py"
)


def _card(params: float, top1: float) -> ModelCard:
    return ModelCard("cas_vit", _PAPER, 2024, "hybrid", params_m=params, top1=top1, source=_SRC)


@register_model(_card(3.20, 78.3))
def cas_vit_xs(**kwargs: Any) -> CASViT:
    return build_model(CASViT, dict(dims=(48, 56, 112, 220), depths=(2, 2, 4, 2)), kwargs)


@register_model(_card(5.76, 80.9))
def cas_vit_s(**kwargs: Any) -> CASViT:
    return build_model(CASViT, dict(dims=(48, 64, 128, 256), depths=(3, 3, 6, 3)), kwargs)


@register_model(_card(12.42, 82.8))
def cas_vit_m(**kwargs: Any) -> CASViT:
    return build_model(CASViT, dict(dims=(64, 96, 192, 384), depths=(3, 3, 6, 3)), kwargs)


@register_model(_card(21.76, 83.9))
def cas_vit_t(**kwargs: Any) -> CASViT:
    return build_model(CASViT, dict(dims=(96, 128, 256, 512), depths=(3, 3, 6, 3)), kwargs)


@register_model(
    ModelCard(
        "cas_vit",
        _PAPER,
        2024,
        "hybrid",
        scale="cpu",
        img_size=32,
        notes="stem stride 2 (one stride-2 conv): grids 16, 8, 4, 2; no distillation head",
    )
)
def cas_vit_pico(**kwargs: Any) -> CASViT:
    return build_model(
        CASViT,
        dict(
            img_size=32,
            dims=(32, 48, 96, 160),
            depths=(1, 1, 2, 1),
            stem_stride=2,
            distillation=False,
        ),
        kwargs,
    )
