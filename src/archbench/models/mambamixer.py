"""Vision MambaMixer (ViM2): selective token and channel mixers with weighted averaging.

*MambaMixer: Efficient Selective State Space Models with Dual Token and Channel
Selection* (Behrouz et al., 2024). Each block has

- a Selective Token Mixer: LN -> in_proj to (x, z) -> depthwise 3x3 conv on the token
  grid -> SiLU -> a bidirectional selective scan over the tokens (forward and reversed
  scans with their own SSM parameters, summed) -> ``* silu(z)`` -> out_proj;
- a Selective Channel Mixer: the same bidirectional S6 with the *channels* as the
  sequence and each channel's token values as its features (so its weights depend on the
  token grid);
- weighted averaging of earlier features: the input of every mixer is a learned weighted
  sum of the stage input and all earlier mixer outputs in the stage (initialised to take
  only the latest one, a plain residual stack).

Stages are joined by 2x2 patch merging, as in the paper's hierarchical ViM2.

Deviations: the official ViM2 code and per-variant widths and depths were not available
here, so only a CPU-scale variant is registered; the scans run in raster order.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import DropPath, LayerNorm2d, drop_path_rates
from ..layers.ssm import SelectiveSSM
from ._base import FeatureInfo, ImageClassifier, check_img_size
from ._registry import ModelCard, build_model, register_model

__all__ = ["MambaMixerNet", "SelectiveChannelMixer", "SelectiveTokenMixer"]


class _BiS6(nn.Module):
    """A gated bidirectional S6 on (B, L, C) sequences; ``conv`` mixes neighbours first."""

    def __init__(self, dim: int, d_state: int, expand: float, conv: nn.Module | None) -> None:
        super().__init__()
        inner = int(expand * dim)
        rank = math.ceil(dim / 16)
        self.inner = inner
        self.in_proj = nn.Linear(dim, 2 * inner)
        self.conv = (
            conv if conv is not None else nn.Conv1d(inner, inner, 3, padding=1, groups=inner)
        )
        self.ssm_fwd = SelectiveSSM(inner, d_state, rank)
        self.ssm_bwd = SelectiveSSM(inner, d_state, rank)
        self.out_proj = nn.Linear(inner, dim)

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, z = self.in_proj(x).chunk(2, dim=-1)
        x = F.silu(self.mix(x.transpose(1, 2)))  # (B, E, L)
        y = self.ssm_fwd(x) + self.ssm_bwd(x.flip(-1)).flip(-1)
        return self.out_proj(y.transpose(1, 2) * F.silu(z))


class SelectiveTokenMixer(_BiS6):
    def __init__(self, dim: int, grid: tuple[int, int], d_state: int, expand: float) -> None:
        inner = int(expand * dim)
        super().__init__(dim, d_state, expand, nn.Conv2d(inner, inner, 3, padding=1, groups=inner))
        self.grid = grid

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        b, e, _ = x.shape
        return self.conv(x.reshape(b, e, *self.grid)).flatten(2)


class SelectiveChannelMixer(_BiS6):
    """Bidirectional S6 across channels: (B, L, C) -> scan over C with L features."""

    def __init__(self, num_tokens: int, d_state: int, expand: float) -> None:
        super().__init__(num_tokens, d_state, expand, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class _Stage(nn.Module):
    def __init__(
        self,
        dim: int,
        grid: tuple[int, int],
        depth: int,
        d_state: int,
        expand: float,
        channel_expand: float,
        dprs: list[float],
    ) -> None:
        super().__init__()
        n = grid[0] * grid[1]
        self.token_norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(depth))
        self.token_mixers = nn.ModuleList(
            SelectiveTokenMixer(dim, grid, d_state, expand) for _ in range(depth)
        )
        self.channel_norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(depth))
        self.channel_mixers = nn.ModuleList(
            SelectiveChannelMixer(n, d_state, channel_expand) for _ in range(depth)
        )
        self.drop_paths = nn.ModuleList(DropPath(p) if p > 0 else nn.Identity() for p in dprs)
        # weights over earlier features: mixer k (0..2*depth-1) sees k + 1 earlier outputs
        self.avg_weights = nn.ParameterList(
            nn.Parameter(F.one_hot(torch.tensor(k), k + 1).float()) for k in range(2 * depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for i in range(len(self.token_mixers)):
            for kind in (0, 1):  # token mixer, then channel mixer
                k = 2 * i + kind
                w = self.avg_weights[k]
                inp = sum(w[j] * f for j, f in enumerate(feats))
                norm = (self.token_norms, self.channel_norms)[kind][i]
                mixer = (self.token_mixers, self.channel_mixers)[kind][i]
                feats.append(inp + self.drop_paths[i](mixer(norm(inp))))
        return feats[-1]


class MambaMixerNet(ImageClassifier):
    width_args = ("dims",)
    depth_args = ("depths",)

    def __init__(
        self,
        patch_size: int = 4,
        dims: tuple[int, ...] = (32, 64),
        depths: tuple[int, ...] = (2, 1),
        d_state: int = 8,
        expand: float = 2.0,
        channel_expand: float = 1.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 32,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if len(dims) != len(depths) or not dims:
            raise ValueError(f"dims {dims} and depths {depths} must be non-empty, same length")
        multiple = patch_size * 2 ** (len(dims) - 1)
        size = check_img_size(img_size, multiple, "MambaMixerNet")
        self.num_classes, self.in_chans = num_classes, in_chans
        self.fixed_input_size = size
        self.img_size_multiple = multiple  # the sizes its constructor accepts
        self.patch_embed = nn.Conv2d(in_chans, dims[0], patch_size, patch_size)
        self.embed_norm = LayerNorm2d(dims[0], eps=1e-5)
        grid = (size[0] // patch_size, size[1] // patch_size)
        dprs = drop_path_rates(drop_path_rate, depths)
        self.merges = nn.ModuleList()
        self.stages = nn.ModuleList()
        self.feature_info = []
        reduction = patch_size
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            if i > 0:
                self.merges.append(nn.Conv2d(dims[i - 1], dim, 2, 2))
                grid = (grid[0] // 2, grid[1] // 2)
                reduction *= 2
            else:
                self.merges.append(nn.Identity())
            self.stages.append(_Stage(dim, grid, depth, d_state, expand, channel_expand, dprs[i]))
            self.feature_info.append(FeatureInfo(dim, reduction, f"stages.{i}"))
        self.final_grid = grid
        self.norm = nn.LayerNorm(dims[-1])
        self.num_features = dims[-1]
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.cam_target = f"stages.{len(dims) - 1}"

    def tokens_to_map(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.ndim == 4:
            return tokens
        side = math.isqrt(tokens.shape[1])
        h = side if side * side == tokens.shape[1] else self.final_grid[0]
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, -1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.embed_norm(self.patch_embed(x))
        for merge, stage in zip(self.merges, self.stages):
            x = merge(x)
            b, c, h, w = x.shape
            x = stage(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, c, h, w)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.norm(x.mean((2, 3))))
        return x if pre_logits else self.head(x)


_PAPER = "MambaMixer: Efficient Selective State Space Models with Dual Token and Channel Selection"


@register_model(
    ModelCard(
        "mambamixer",
        _PAPER,
        2024,
        "ssm",
        scale="cpu",
        img_size=32,
        notes="ViM2-style, patch 4: 8x8 then 4x4 token grids",
    )
)
def mambamixer_pico(**kwargs: Any) -> MambaMixerNet:
    return build_model(MambaMixerNet, dict(img_size=32), kwargs)
