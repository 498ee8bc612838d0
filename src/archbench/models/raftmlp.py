"""RaftMLP: serial raft token mixing (vertical, horizontal) and channel mixing.

*RaftMLP: How Much Can Be Done Without Attention and with Less Spatial Locality?*
(Tatsunami & Taki, 2022). A hierarchy of levels; each level embeds ``p x p`` patches
with a linear layer and stacks blocks of

- vertical-channel mixing: channels are split into ``r`` rafts, and an MLP (expansion
  ``token_expansion``) mixes the ``r * H`` values that share a column and a channel index
  within the raft (LayerNorm over channels first, residual);
- horizontal-channel mixing: the same over the ``r * W`` values of a row;
- channel mixing: a LayerNorm + MLP over channels (expansion ``channel_expansion``).

The token MLPs are sized for the grid, so a model is tied to its ``img_size``; features
are LayerNorm-ed and averaged for the linear head.

The canonical S / M / L variants use the release's cross-scale embedding (patches of two
sizes around each cell, one linear layer) and its layer tables; the CPU variant uses the
plain linear patch embedding.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..layers import DropPath, LayerNorm2d, drop_path_rates
from ._base import FeatureInfo, ImageClassifier, check_img_size
from ._registry import ModelCard, build_model, register_model

__all__ = ["RaftMLP", "RaftTokenMixing"]


def _mlp(dim: int, ratio: float, drop: float) -> nn.Sequential:
    hidden = int(dim * ratio)
    return nn.Sequential(
        nn.Linear(dim, hidden),
        nn.GELU(),
        nn.Dropout(drop),
        nn.Linear(hidden, dim),
        nn.Dropout(drop),
    )


class RaftTokenMixing(nn.Module):
    """One raft token-mixing step along H (``axis="vertical"``) or W, NCHW in and out."""

    def __init__(
        self,
        dim: int,
        grid: tuple[int, int],
        raft_size: int,
        axis: str,
        ratio: float,
        drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % raft_size:
            raise ValueError(f"dim {dim} must be divisible by raft_size {raft_size}")
        if axis not in ("vertical", "horizontal"):
            raise ValueError(f"axis must be 'vertical' or 'horizontal', got {axis!r}")
        self.r, self.axis = raft_size, axis
        length = grid[0] if axis == "vertical" else grid[1]
        self.norm = LayerNorm2d(dim, eps=1e-5)
        self.mlp = _mlp(raft_size * length, ratio, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        r, co = self.r, c // self.r
        t = self.norm(x).reshape(b, r, co, h, w)
        if self.axis == "vertical":  # features: (raft, row) for each (channel, column)
            t = t.permute(0, 2, 4, 1, 3).reshape(b, co, w, r * h)
            t = self.mlp(t).view(b, co, w, r, h).permute(0, 3, 1, 4, 2)
        else:  # features: (raft, column) for each (channel, row)
            t = t.permute(0, 2, 3, 1, 4).reshape(b, co, h, r * w)
            t = self.mlp(t).view(b, co, h, r, w).permute(0, 3, 1, 2, 4)
        return x + self.drop_path(t.reshape(b, c, h, w))


class CrossScaleEmbedding(nn.Module):
    """RaftMLP's cross-scale embedding: patches of several sizes around each ``stride`` cell.

    The release concatenates unfolded ``k x k`` neighbourhoods (padding ``(k - stride)/2``)
    for every ``k`` in ``kernels`` and applies one linear layer; that equals a sum of
    convolutions with one bias, which is how it is computed here.
    """

    def __init__(self, cin: int, cout: int, kernels: tuple[int, ...]) -> None:
        super().__init__()
        stride = min(kernels)
        if any(k % stride or (k - stride) % 2 for k in kernels):
            raise ValueError(f"embedding kernels {kernels} must be multiples of {stride}")
        self.convs = nn.ModuleList(
            nn.Conv2d(cin, cout, k, stride, (k - stride) // 2, bias=i == 0)
            for i, k in enumerate(kernels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(conv(x) for conv in self.convs)


class _ChannelMixing(nn.Module):
    def __init__(self, dim: int, ratio: float, drop: float, drop_path: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = _mlp(dim, ratio, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.mlp(self.norm(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        return x + self.drop_path(t)


class RaftMLP(ImageClassifier):
    width_args = ("dims",)
    depth_args = ("depths",)

    def __init__(
        self,
        patch_sizes: tuple[int, ...] = (4, 2, 2, 2),
        dims: tuple[int, ...] = (64, 128, 256, 512),
        depths: tuple[int, ...] = (2, 2, 6, 2),
        raft_size: int = 2,
        embedding_kernels: tuple[tuple[int, ...], ...] | None = None,
        token_expansion: float = 2.0,
        channel_expansion: float = 4.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if not (len(patch_sizes) == len(dims) == len(depths)) or not dims:
            raise ValueError("patch_sizes, dims and depths must be non-empty and equally long")
        total = 1
        for p in patch_sizes:
            total *= p
        size = check_img_size(img_size, total, "RaftMLP")
        self.num_classes, self.in_chans = num_classes, in_chans
        self.fixed_input_size = size
        self.img_size_multiple = total  # the sizes its constructor accepts
        dprs = drop_path_rates(drop_path_rate, depths)
        self.levels = nn.ModuleList()
        self.feature_info = []
        grid, cin, reduction = size, in_chans, 1
        for i, (p, dim, depth) in enumerate(zip(patch_sizes, dims, depths)):
            grid = (grid[0] // p, grid[1] // p)
            reduction *= p
            if embedding_kernels is None:  # linear patch embedding
                layers: list[nn.Module] = [nn.Conv2d(cin, dim, p, p)]
            else:
                if min(embedding_kernels[i]) != p:
                    raise ValueError(
                        f"level {i}: the smallest embedding kernel must equal patch size {p}"
                    )
                layers = [CrossScaleEmbedding(cin, dim, embedding_kernels[i])]
            for j in range(depth):
                dp = dprs[i][j]
                layers += [
                    RaftTokenMixing(
                        dim, grid, raft_size, "vertical", token_expansion, drop_rate, dp
                    ),
                    RaftTokenMixing(
                        dim, grid, raft_size, "horizontal", token_expansion, drop_rate, dp
                    ),
                    _ChannelMixing(dim, channel_expansion, drop_rate, dp),
                ]
            self.levels.append(nn.Sequential(*layers))
            self.feature_info.append(FeatureInfo(dim, reduction, f"levels.{i}"))
            cin = dim
        self.norm = nn.LayerNorm(dims[-1])
        self.num_features = dims[-1]
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.cam_target = f"levels.{len(dims) - 1}"

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        for level in self.levels:
            x = level(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.norm(x.permute(0, 2, 3, 1)).mean((1, 2)))
        return x if pre_logits else self.head(x)


_PAPER = "RaftMLP: How Much Can Be Done Without Attention and with Less Spatial Locality?"
_SRC = (
    "RaftMLP paper (ImageNet-1k, 224px); layer tables from the official release's "
    "imagenet-raft-mlp-cross-mlp-emb-{s,m,l} configs"
)
_EMB = ((4, 8), (2, 4), (2, 4), (2,))


def _card(params: float) -> ModelCard:
    return ModelCard("raftmlp", _PAPER, 2022, "mlp", params_m=params, source=_SRC)


@register_model(_card(9.9))
def raftmlp_s(**kwargs: Any) -> RaftMLP:
    cfg = dict(dims=(64, 128, 256, 512), embedding_kernels=_EMB)
    return build_model(RaftMLP, cfg, kwargs)


@register_model(_card(21.4))
def raftmlp_m(**kwargs: Any) -> RaftMLP:
    cfg = dict(dims=(96, 192, 384, 768), embedding_kernels=_EMB)
    return build_model(RaftMLP, cfg, kwargs)


@register_model(_card(36.2))
def raftmlp_l(**kwargs: Any) -> RaftMLP:
    cfg = dict(dims=(128, 192, 512, 1024), embedding_kernels=_EMB)
    return build_model(RaftMLP, cfg, kwargs)


@register_model(
    ModelCard(
        "raftmlp",
        _PAPER,
        2022,
        "mlp",
        scale="cpu",
        img_size=32,
        notes="patch 2 then 2, 2, 2: 16, 8, 4, 2 grids; raft size 2",
    )
)
def raftmlp_pico(**kwargs: Any) -> RaftMLP:
    cfg = dict(patch_sizes=(2, 2, 2, 2), dims=(32, 64, 128, 256), depths=(1, 1, 2, 1), img_size=32)
    return build_model(RaftMLP, cfg, kwargs)
