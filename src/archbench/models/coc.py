"""Context Clusters (CoC): *Image as Set of Points* (Ma et al., ICLR 2023).

An image is a set of points: each pixel's colour plus its (x, y) position in [-0.5, 0.5]
is a 5-d point. A point reducer (a 4x4/4 conv) groups points, then four stages of
``archbench.layers.MetaFormerBlock`` with the context-cluster token mixer
(``archbench.layers.context_cluster``), GroupNorm(1) norms, GELU MLPs and layer scale
1e-5; stages are joined by 3x3/2 point reducers. GroupNorm(1), average pool and a linear
head classify.

CPU variants use a 2x2/2 reducer so that 32x32 inputs give 16, 8, 4, 2 grids.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..layers import MetaFormerBlock, drop_path_rates
from ..layers.context_cluster import ContextCluster  # noqa: F401  (registers the mixer)
from ..layers.helpers import init_trunc_normal_linear
from ..layers.norm import GroupNorm1
from ._base import FeatureInfo, ImageClassifier
from ._registry import ModelCard, build_model, register_model

__all__ = ["ContextClusterNet"]


class ContextClusterNet(ImageClassifier):
    # heads x head_dims is the clustering width, independent of dims, so both are scaled
    width_args = ("dims", "head_dims")
    depth_args = ("depths",)

    def __init__(
        self,
        depths: tuple[int, ...] = (3, 4, 5, 2),
        dims: tuple[int, ...] = (32, 64, 196, 320),
        mlp_ratios: tuple[float, ...] = (8, 8, 4, 4),
        heads: tuple[int, ...] = (4, 4, 8, 8),
        head_dims: tuple[int, ...] = (24, 24, 24, 24),
        proposals: tuple[int, ...] = (2, 2, 2, 2),
        folds: tuple[int, ...] = (8, 4, 2, 1),
        stem_patch: int = 4,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        n = len(depths)
        if not n or any(
            len(t) != n for t in (dims, mlp_ratios, heads, head_dims, proposals, folds)
        ):
            raise ValueError(
                "depths, dims, mlp_ratios, heads, head_dims, proposals, folds: same length"
            )
        self.num_classes, self.in_chans = num_classes, in_chans
        # each stage's grid must split into its fold x fold regions (see input_side_ok)
        self.stem_patch, self.folds = stem_patch, tuple(folds)
        self.stem = nn.Conv2d(in_chans + 2, dims[0], stem_patch, stem_patch)
        dprs = drop_path_rates(drop_path_rate, depths)
        self.stages = nn.ModuleList()
        self.feature_info = []
        reduction = stem_patch
        for i in range(n):
            layers: list[nn.Module] = []
            if i > 0:
                layers.append(nn.Conv2d(dims[i - 1], dims[i], 3, 2, 1))
                reduction *= 2
            cluster = dict(
                heads=heads[i], head_dim=head_dims[i], proposal=proposals[i], fold=folds[i]
            )
            layers += [
                MetaFormerBlock(
                    dims[i],
                    token_mixer="context_cluster",
                    mixer_kwargs=cluster,
                    mlp_ratio=mlp_ratios[i],
                    mlp_act="gelu",
                    mlp_bias=True,
                    norm="groupnorm1",
                    drop=drop_rate,
                    drop_path=dprs[i][j],
                    layer_scale_init=1e-5,
                )
                for j in range(depths[i])
            ]
            self.stages.append(nn.Sequential(*layers))
            self.feature_info.append(FeatureInfo(dims[i], reduction, f"stages.{i}"))
        self.norm = GroupNorm1(dims[-1])
        self.num_features = dims[-1]
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.cam_target = f"stages.{n - 1}"
        self.apply(init_trunc_normal_linear)

    def stage_grids(self, side: int) -> list[int]:
        """One side of every stage's grid for an input side (patchify stem, then 3x3/2 convs)."""
        grids = [side // self.stem_patch]
        for _ in self.folds[1:]:
            grids.append((grids[-1] - 1) // 2 + 1)
        return grids

    def input_side_ok(self, side: int, axis: int = 0) -> bool:
        return all(g >= 1 and g % f == 0 for g, f in zip(self.stage_grids(side), self.folds))

    def input_size_rule(self) -> str:
        return f"needs H and W whose stage grids split into {self.folds} fold regions"

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        b, _, h, w = x.shape
        ys = torch.arange(h, device=x.device, dtype=x.dtype) / max(h - 1, 1) - 0.5
        xs = torch.arange(w, device=x.device, dtype=x.dtype) / max(w - 1, 1) - 0.5
        pos = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=0)
        x = self.stem(torch.cat([x, pos.unsqueeze(0).expand(b, -1, -1, -1)], dim=1))
        for stage in self.stages:
            x = stage(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.norm(x).mean((2, 3)))
        return x if pre_logits else self.head(x)


_PAPER = "Image as Set of Points"
_SRC = "Context-Cluster official README / models/context_cluster.py (ma-xu), 224px"


# Built from the official release's layer table, these count 5.57M, 14.66M and 29.29M
# against the README's 5.3M, 14.0M and 27.9M; the source of the gap was not found, so the
# variants are registered as "other" rather than canonical.
def _card(params: float, top1: float, ours: float) -> ModelCard:
    return ModelCard(
        "coc",
        _PAPER,
        2023,
        "mlp",
        scale="other",
        params_m=params,
        top1=top1,
        source=_SRC,
        notes=f"paper {params}M; this layout counts {ours}M",
    )


_COMMON = dict(mlp_ratios=(8, 8, 4, 4), proposals=(2, 2, 2, 2), folds=(8, 4, 2, 1))


@register_model(_card(5.3, 71.8, 5.57))
def coc_tiny(**kwargs: Any) -> ContextClusterNet:
    cfg = dict(
        _COMMON,
        depths=(3, 4, 5, 2),
        dims=(32, 64, 196, 320),
        heads=(4, 4, 8, 8),
        head_dims=(24, 24, 24, 24),
    )
    return build_model(ContextClusterNet, cfg, kwargs)


@register_model(_card(14.0, 77.5, 14.66))
def coc_small(**kwargs: Any) -> ContextClusterNet:
    cfg = dict(
        _COMMON,
        depths=(2, 2, 6, 2),
        dims=(64, 128, 320, 512),
        heads=(4, 4, 8, 8),
        head_dims=(32, 32, 32, 32),
    )
    return build_model(ContextClusterNet, cfg, kwargs)


@register_model(_card(27.9, 81.0, 29.29))
def coc_medium(**kwargs: Any) -> ContextClusterNet:
    cfg = dict(
        _COMMON,
        depths=(4, 4, 12, 4),
        dims=(64, 128, 320, 512),
        heads=(6, 6, 12, 12),
        head_dims=(32, 32, 32, 32),
    )
    return build_model(ContextClusterNet, cfg, kwargs)


@register_model(
    ModelCard(
        "coc",
        _PAPER,
        2023,
        "mlp",
        scale="cpu",
        img_size=32,
        notes="2x2/2 point reducer: 16, 8, 4, 2 grids; folds 2, 1, 1, 1",
    )
)
def coc_pico(**kwargs: Any) -> ContextClusterNet:
    cfg = dict(
        depths=(1, 1, 2, 1),
        dims=(24, 48, 96, 192),
        mlp_ratios=(4, 4, 4, 4),
        heads=(2, 2, 4, 4),
        head_dims=(16, 16, 16, 16),
        proposals=(2, 2, 2, 2),
        folds=(2, 1, 1, 1),
        stem_patch=2,
        img_size=32,
    )
    return build_model(ContextClusterNet, cfg, kwargs)
