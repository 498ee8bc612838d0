"""TransNeXt (*TransNeXt: Robust Foveal Visual Perception for Vision Transformers*, 2024).

A four-stage pyramid: overlapping patch embedding (7x7/4, then 3x3/2), pre-norm blocks
of aggregated attention (stages 1-3, ``archbench.layers.local_attention``) or
length-scaled cosine global attention (stage 4), each followed by a convolutional GLU
channel mixer, and a LayerNorm closing every stage. The pooled-key grid is
``stage grid // sr_ratio`` (7x7 at 224 for the canonical sizes).

Position tables are computed from the input grid at run time, so the model accepts
any input size (its patch embeddings are padded convolutions); ``pretrain_size`` (default
``img_size``) fixes the scale of the continuous position bias as in the paper.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..layers import DropPath, drop_path_rates
from ..layers.helpers import init_trunc_normal_linear
from ..layers.local_attention import AggregatedAttention, CosineCpbAttention
from ._base import FeatureInfo, ImageClassifier, check_img_size, to_2tuple
from ._registry import ModelCard, build_model, register_model

__all__ = ["ConvolutionalGLU", "TransNeXt"]


class ConvolutionalGLU(nn.Module):
    """Convolutional GLU (TransNeXt): fc -> (3x3 depthwise conv + GELU gate) * value -> fc.

    The hidden width is 2/3 of ``hidden_features`` so that the two-branch first layer
    costs what a plain MLP of ``hidden_features`` would.
    """

    def __init__(self, dim: int, hidden_features: int, drop: float = 0.0) -> None:
        super().__init__()
        hidden = int(2 * hidden_features / 3)
        self.fc1 = nn.Linear(dim, hidden * 2)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        b, n, _ = x.shape
        gate, value = self.fc1(x).chunk(2, dim=-1)
        gate = self.dwconv(gate.transpose(1, 2).reshape(b, -1, *size)).flatten(2).transpose(1, 2)
        x = self.drop(self.act(gate) * value)
        return self.drop(self.fc2(x))


class TransNeXtBlock(nn.Module):
    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        sr_ratio: int,
        window_size: int,
        pretrain_size: tuple[int, int],
        drop: float,
        drop_path: float,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        if sr_ratio == 1:
            self.attn: nn.Module = CosineCpbAttention(
                dim, num_heads, proj_drop=drop, pretrain_size=pretrain_size
            )
        else:
            self.attn = AggregatedAttention(
                dim, num_heads, window_size, sr_ratio, proj_drop=drop, pretrain_size=pretrain_size
            )
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = ConvolutionalGLU(dim, int(dim * mlp_ratio), drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), size))
        return x + self.drop_path(self.mlp(self.norm2(x), size))


class TransNeXtStage(nn.Module):
    """Overlapping patch embedding, blocks, LayerNorm; NCHW in and out."""

    def __init__(
        self,
        cin: int,
        dim: int,
        kernel: int,
        stride: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        sr_ratio: int,
        window_size: int,
        pretrain_size: tuple[int, int],
        drop: float,
        dpr: list[float],
    ) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cin, dim, kernel, stride, padding=kernel // 2)
        self.embed_norm = nn.LayerNorm(dim, eps=1e-5)
        self.blocks = nn.ModuleList(
            TransNeXtBlock(
                dim, num_heads, mlp_ratio, sr_ratio, window_size, pretrain_size, drop, dpr[j]
            )
            for j in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        b, c, h, w = x.shape
        x = self.embed_norm(x.flatten(2).transpose(1, 2))
        for blk in self.blocks:
            x = blk(x, (h, w))
        return self.norm(x).transpose(1, 2).reshape(b, c, h, w)


class TransNeXt(ImageClassifier):
    """TransNeXt: aggregated attention + convolutional GLU in a four-stage pyramid."""

    width_args = ("embed_dims",)
    depth_args = ("depths",)

    def __init__(
        self,
        embed_dims: tuple[int, ...] = (48, 96, 192, 384),
        depths: tuple[int, ...] = (2, 2, 15, 2),
        num_heads: tuple[int, ...] = (2, 4, 8, 16),
        mlp_ratios: tuple[float, ...] = (8, 8, 4, 4),
        sr_ratios: tuple[int, ...] = (8, 4, 2, 1),
        window_size: int = 3,
        patch_size: int = 4,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int | tuple[int, int] = 224,
        pretrain_size: int | None = None,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        n = len(embed_dims)
        if not all(len(t) == n for t in (depths, num_heads, mlp_ratios, sr_ratios)):
            raise ValueError(
                "embed_dims, depths, num_heads, mlp_ratios and sr_ratios need one entry per stage"
            )
        if patch_size not in (2, 4):
            raise ValueError(f"patch_size must be 2 or 4 (first-stage stride), got {patch_size}")
        size = check_img_size(img_size, 1, "TransNeXt")
        pre = to_2tuple(pretrain_size) if pretrain_size is not None else size
        self.num_classes, self.in_chans = num_classes, in_chans
        # padded strided layers map any input size onto the stages: no size constraint
        dpr = drop_path_rates(drop_path_rate, depths)
        stages, cin, stride = [], in_chans, 1
        self.feature_info = []
        for i in range(n):
            s = patch_size if i == 0 else 2
            stride *= s
            stages.append(
                TransNeXtStage(
                    cin,
                    embed_dims[i],
                    2 * patch_size - 1 if i == 0 else 3,
                    s,
                    depths[i],
                    num_heads[i],
                    mlp_ratios[i],
                    sr_ratios[i],
                    window_size,
                    (pre[0] // stride, pre[1] // stride),
                    drop_rate,
                    dpr[i],
                )
            )
            self.feature_info.append(FeatureInfo(embed_dims[i], stride, f"stages.{i}"))
            cin = embed_dims[i]
        self.stages = nn.Sequential(*stages)
        self.num_features = embed_dims[-1]
        self.cam_target = f"stages.{n - 1}"
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        self.apply(self._init_weights)

    _init_weights = staticmethod(init_trunc_normal_linear)

    def no_weight_decay(self) -> set[str]:
        keys = ("query_embedding", "relative_pos_bias_local", "cpb", "temperature")
        return {n for n, _ in self.named_parameters() if any(k in n for k in keys)}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x.mean(dim=(2, 3)))
        return x if pre_logits else self.head(x)


_PAPER = "TransNeXt: Robust Foveal Visual Perception for Vision Transformers"
_SRC = (
    "TransNeXt paper Table (ImageNet-1K 224); official code "
    "DaiShiResearch/TransNeXt classification/transnext_native.py"
)


def _transnext(defaults: dict[str, Any], kwargs: dict[str, Any]) -> TransNeXt:
    return build_model(TransNeXt, defaults, kwargs)


@register_model(
    ModelCard("transnext", _PAPER, 2024, "vit", params_m=12.8, gmacs=2.7, top1=82.5, source=_SRC)
)
def transnext_micro(**kwargs: Any) -> TransNeXt:
    return _transnext({}, kwargs)


@register_model(
    ModelCard("transnext", _PAPER, 2024, "vit", params_m=28.2, gmacs=5.7, top1=84.0, source=_SRC)
)
def transnext_tiny(**kwargs: Any) -> TransNeXt:
    return _transnext(dict(embed_dims=(72, 144, 288, 576), num_heads=(3, 6, 12, 24)), kwargs)


@register_model(
    ModelCard("transnext", _PAPER, 2024, "vit", params_m=49.7, gmacs=10.3, top1=84.7, source=_SRC)
)
def transnext_small(**kwargs: Any) -> TransNeXt:
    return _transnext(
        dict(embed_dims=(72, 144, 288, 576), num_heads=(3, 6, 12, 24), depths=(5, 5, 22, 5)),
        kwargs,
    )


@register_model(
    ModelCard("transnext", _PAPER, 2024, "vit", params_m=89.7, gmacs=18.4, top1=84.8, source=_SRC)
)
def transnext_base(**kwargs: Any) -> TransNeXt:
    return _transnext(
        dict(embed_dims=(96, 192, 384, 768), num_heads=(4, 8, 16, 32), depths=(5, 5, 23, 5)),
        kwargs,
    )


@register_model(
    ModelCard(
        "transnext",
        _PAPER,
        2024,
        "vit",
        scale="cpu",
        img_size=32,
        notes="stride-2 stem: grids 16/8/4/2; pooled keys 4x4, 4x4, 2x2; global attention last",
    )
)
def transnext_pico(**kwargs: Any) -> TransNeXt:
    return _transnext(
        dict(
            embed_dims=(24, 48, 96, 160),
            depths=(1, 1, 2, 1),
            num_heads=(1, 2, 4, 8),
            sr_ratios=(4, 2, 2, 1),
            patch_size=2,
            img_size=32,
        ),
        kwargs,
    )
