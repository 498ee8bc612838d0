"""Vision MambaMixer (ViM2): selective token and channel mixers with weighted averaging.

*MambaMixer: Efficient Selective State Space Models with Dual Token and Channel
Selection* (Behrouz et al., 2024). Each block has

- a Selective Token Mixer: LN -> in_proj to (x, z) -> for each scan direction, the
  tokens in that order -> its own causal depthwise 1-D convolution (width ``d_conv``) ->
  SiLU -> its own selective scan (S6) -> back to raster order; the directions' outputs
  are summed -> ``* silu(z)`` -> out_proj. ``scan="cross"`` (default) scans the 2-D grid
  in four directions, rows and columns, each forwards and backwards (the cross-scan of
  VMamba that ViM2 builds on); ``scan="bidirectional"`` scans raster order forwards and
  backwards only (Vim's bidirectional block);
- a Selective Channel Mixer: the same gated bidirectional S6 (own convolution and S6 per
  direction) with the *channels* as the sequence and each channel's token values as its
  features (so its weights depend on the token grid);
- weighted averaging of earlier features: the input of every mixer is a learned weighted
  sum of the stage input and all earlier token- and channel-mixer outputs in the stage
  (initialised to take only the latest one, a plain residual stack), so later mixers
  have direct access to early features.

Stages are joined by 2x2 patch merging, as in the paper's hierarchical ViM2.

Deviations: the official ViM2 code and per-variant widths and depths were not available
here, so only a CPU-scale variant is registered; the weighted averaging runs within a
stage (the token grid and width change between stages).
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

__all__ = ["MambaMixerNet", "SelectiveChannelMixer", "SelectiveTokenMixer", "scan_orders"]

SCANS = ("cross", "bidirectional")


def scan_orders(grid: tuple[int, int], scan: str) -> list[torch.Tensor]:
    """Token index sequences of each scan direction over an (H, W) raster-ordered grid."""
    if scan not in SCANS:
        raise ValueError(f"scan must be one of {SCANS}, got {scan!r}")
    h, w = grid
    raster = torch.arange(h * w)
    orders = [raster, raster.flip(0)]
    if scan == "cross":
        columns = raster.view(h, w).t().reshape(-1)  # column by column
        orders += [columns, columns.flip(0)]
    return orders


class _Direction(nn.Module):
    """One scan direction: causal depthwise conv1d -> SiLU -> S6, on (B, E, L)."""

    def __init__(self, inner: int, d_state: int, dt_rank: int, d_conv: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(inner, inner, d_conv, padding=d_conv - 1, groups=inner)
        self.ssm = SelectiveSSM(inner, d_state, dt_rank)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[-1]
        return self.ssm(F.silu(self.conv(x)[..., :length]))


class _GatedScan(nn.Module):
    """in_proj -> (x, z); sum over directions of scan(x in that order); * silu(z); out_proj."""

    def __init__(
        self, dim: int, d_state: int, expand: float, d_conv: int, orders: list[torch.Tensor]
    ) -> None:
        super().__init__()
        inner = int(expand * dim)
        if inner < 1 or d_conv < 1:
            raise ValueError(f"need expand * dim >= 1 and d_conv >= 1; got {inner}, {d_conv}")
        rank = math.ceil(dim / 16)
        self.inner = inner
        self.in_proj = nn.Linear(dim, 2 * inner)
        self.directions = nn.ModuleList(_Direction(inner, d_state, rank, d_conv) for _ in orders)
        for i, order in enumerate(orders):
            self.register_buffer(f"order_{i}", order, persistent=False)
            self.register_buffer(f"inverse_{i}", torch.argsort(order), persistent=False)
        self.out_proj = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, z = self.in_proj(x).chunk(2, dim=-1)
        x = x.transpose(1, 2)  # (B, E, L)
        y = 0
        for i, direction in enumerate(self.directions):
            order, inverse = getattr(self, f"order_{i}"), getattr(self, f"inverse_{i}")
            y = y + direction(x[..., order])[..., inverse]
        return self.out_proj(y.transpose(1, 2) * F.silu(z))


class SelectiveTokenMixer(_GatedScan):
    """Selective token mixing over a (H, W) token grid in raster order: (B, H*W, C)."""

    def __init__(
        self,
        dim: int,
        grid: tuple[int, int],
        d_state: int,
        expand: float,
        scan: str = "cross",
        d_conv: int = 4,
    ) -> None:
        super().__init__(dim, d_state, expand, d_conv, scan_orders(grid, scan))
        self.grid, self.scan = grid, scan


class SelectiveChannelMixer(nn.Module):
    """Bidirectional S6 across channels: (B, L, C) -> scan over C with L features.

    The channels (after ``in_proj`` of each channel's L token values) are scanned first to
    last and last to first, each direction with its own causal conv and S6, summed and
    gated by ``silu(z)``.
    """

    def __init__(self, num_tokens: int, d_state: int, expand: float, d_conv: int = 4) -> None:
        super().__init__()
        inner = int(expand * num_tokens)
        if inner < 1 or d_conv < 1:
            raise ValueError(f"need expand * tokens >= 1 and d_conv >= 1; got {inner}, {d_conv}")
        rank = math.ceil(num_tokens / 16)
        self.in_proj = nn.Linear(num_tokens, 2 * inner)
        self.directions = nn.ModuleList(_Direction(inner, d_state, rank, d_conv) for _ in range(2))
        self.out_proj = nn.Linear(inner, num_tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, z = self.in_proj(x.transpose(1, 2)).chunk(2, dim=-1)  # (B, C, E) each
        u = u.transpose(1, 2)  # (B, E, C): the channels are the sequence
        fwd, bwd = self.directions
        y = fwd(u) + bwd(u.flip(-1)).flip(-1)
        return self.out_proj(y.transpose(1, 2) * F.silu(z)).transpose(1, 2)


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
        scan: str = "cross",
        d_conv: int = 4,
    ) -> None:
        super().__init__()
        n = grid[0] * grid[1]
        self.token_norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(depth))
        self.token_mixers = nn.ModuleList(
            SelectiveTokenMixer(dim, grid, d_state, expand, scan, d_conv) for _ in range(depth)
        )
        self.channel_norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(depth))
        self.channel_mixers = nn.ModuleList(
            SelectiveChannelMixer(n, d_state, channel_expand, d_conv) for _ in range(depth)
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
        scan: str = "cross",
        d_conv: int = 4,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 32,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if len(dims) != len(depths) or not dims:
            raise ValueError(f"dims {dims} and depths {depths} must be non-empty, same length")
        if scan not in SCANS:
            raise ValueError(f"scan must be one of {SCANS}, got {scan!r}")
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
            self.stages.append(
                _Stage(dim, grid, depth, d_state, expand, channel_expand, dprs[i], scan, d_conv)
            )
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
        notes="ViM2-style, patch 4: 8x8 then 4x4 token grids; four-direction token scans",
    )
)
def mambamixer_pico(**kwargs: Any) -> MambaMixerNet:
    return build_model(MambaMixerNet, dict(img_size=32), kwargs)
