"""PlainMamba: a non-hierarchical Mamba with zig-zag 2D scans and direction tokens.

*PlainMamba: Improving Non-Hierarchical Mamba in Visual Recognition* (Yang et al., 2024).
A conv patch embedding (7x7/2 conv-BN-ReLU, optional 3x3 conv-BN-ReLU, then a (p/2)x(p/2)
projection at stride p/2), learned position embeddings, and ``depth`` identical blocks:
``x + Mamba2D(LN(x))``. The Mamba2D mixer: in_proj to (x, z), a depthwise 7x7 conv on
the token grid, SiLU, then four selective scans along continuous zig-zag paths (row
snake, its reverse, column snake, its reverse); each step adds a learned direction token
(start / right / left / up / down) to B. The four outputs are summed, gated by silu(z)
and projected back. L1 adds a depthwise 3x3 conv-BN-GELU after its first block.

The scan is ``archbench.layers.ssm.selective_scan``. Deviation: the official code permutes
only x for each path and leaves dt, B and C in raster order; here the input-dependent
(dt, B, C) of a token travel with it along each path, as the paper describes a scan.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import DropPath, drop_path_rates
from ..layers.ssm import SelectiveSSM
from ._base import FeatureInfo, ImageClassifier, check_img_size
from ._registry import ModelCard, build_model, register_model

__all__ = ["PlainMamba", "PlainMamba2D", "zigzag_paths"]

# direction codes of each step: 0 start, 1 right, 2 left, 3 up, 4 down
_MOVES = {(0, 1): 1, (0, -1): 2, (-1, 0): 3, (1, 0): 4}


def zigzag_paths(h: int, w: int) -> tuple[list[list[int]], list[list[int]]]:
    """The four continuous scan paths over an h x w grid and each step's direction code.

    Row snake from the top-left corner, its reverse, column snake from the top-left
    corner, its reverse. Every path visits each cell once, moving to a 4-neighbour.
    """
    rows = [(i, j if i % 2 == 0 else w - 1 - j) for i in range(h) for j in range(w)]
    cols = [(i if j % 2 == 0 else h - 1 - i, j) for j in range(w) for i in range(h)]
    paths, dirs = [], []
    for cells in (rows, rows[::-1], cols, cols[::-1]):
        paths.append([i * w + j for i, j in cells])
        steps = [0] + [_MOVES[(b[0] - a[0], b[1] - a[1])] for a, b in zip(cells[:-1], cells[1:])]
        dirs.append(steps)
    return paths, dirs


class PlainMamba2D(nn.Module):
    """The PlainMamba token mixer on (B, L, C) tokens of an ``input_size`` grid."""

    def __init__(
        self,
        dim: int,
        input_size: tuple[int, int],
        d_state: int = 16,
        expand: float = 2.0,
        conv_size: int = 7,
        bias: bool = True,
        chunk_size: int = 16,
    ) -> None:
        super().__init__()
        self.d_inner = int(expand * dim)
        self.input_size = tuple(input_size)
        self.in_proj = nn.Linear(dim, 2 * self.d_inner, bias=bias)
        self.conv2d = nn.Conv2d(
            self.d_inner, self.d_inner, conv_size, padding=conv_size // 2, groups=self.d_inner
        )
        self.ssm = SelectiveSSM(self.d_inner, d_state, math.ceil(dim / 16), chunk_size=chunk_size)
        self.out_proj = nn.Linear(self.d_inner, dim, bias=bias)
        self.direction_Bs = nn.Parameter(torch.zeros(5, d_state))
        nn.init.trunc_normal_(self.direction_Bs, std=0.02)
        paths, dirs = zigzag_paths(*self.input_size)
        order = torch.tensor(paths)
        self.register_buffer("order", order, persistent=False)  # (4, L)
        self.register_buffer("inverse", order.argsort(dim=1), persistent=False)
        self.register_buffer("directions", torch.tensor(dirs), persistent=False)  # (4, L)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, length, _ = x.shape
        h, w = self.input_size
        if length != h * w:
            raise ValueError(f"PlainMamba2D was built for a {self.input_size} grid, got {length}")
        x, z = self.in_proj(x).chunk(2, dim=-1)
        x = x.transpose(1, 2).reshape(b, self.d_inner, h, w)
        x = F.silu(self.conv2d(x)).flatten(2)  # (B, E, L)
        # the four paths become four batch groups of one scan call
        xs = x[:, :, self.order].permute(2, 0, 1, 3).reshape(4 * b, self.d_inner, length)
        extra = self.direction_Bs[self.directions].transpose(1, 2)  # (4, N, L)
        extra = extra.unsqueeze(1).expand(4, b, -1, -1).reshape(4 * b, -1, length)
        ys = self.ssm(xs, extra).view(4, b, self.d_inner, length)
        y = sum(ys[k][..., self.inverse[k]] for k in range(4))
        return self.out_proj(y.transpose(1, 2) * F.silu(z))


class PlainMambaLayer(nn.Module):
    def __init__(
        self,
        dim: int,
        input_size: tuple[int, int],
        d_state: int,
        with_dwconv: bool,
        drop_path: float,
        chunk_size: int,
    ) -> None:
        super().__init__()
        self.input_size = input_size
        self.norm = nn.LayerNorm(dim)
        self.mamba = PlainMamba2D(dim, input_size, d_state, chunk_size=chunk_size)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.dw = (
            nn.Sequential(
                nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False),
                nn.BatchNorm2d(dim),
                nn.GELU(),
            )
            if with_dwconv
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.mamba(self.norm(x)))
        if self.dw is not None:
            b, n, c = x.shape
            grid = x.transpose(1, 2).reshape(b, c, *self.input_size)
            x = self.dw(grid).flatten(2).transpose(1, 2)
        return x


class PlainMamba(ImageClassifier):
    width_args = ("embed_dim", "stem_width")
    depth_args = ("depth",)
    isotropic = True  # feature_info lists every block

    def __init__(
        self,
        patch_size: int = 16,
        embed_dim: int = 192,
        depth: int = 24,
        num_convs_patch_embed: int = 1,
        layers_with_dwconv: tuple[int, ...] = (),
        d_state: int = 16,
        stem_width: int = 64,
        chunk_size: int = 16,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if patch_size % 2 or patch_size < 2:
            raise ValueError(f"patch_size must be an even number >= 2, got {patch_size}")
        size = check_img_size(img_size, patch_size, "PlainMamba")
        self.num_classes, self.in_chans = num_classes, in_chans
        self.fixed_input_size = size
        self.img_size_multiple = patch_size  # the sizes its constructor accepts
        self.grid_size = (size[0] // patch_size, size[1] // patch_size)
        convs: list[nn.Module] = [
            nn.Conv2d(in_chans, stem_width, 7, 2, 3, bias=False),
            nn.BatchNorm2d(stem_width),
            nn.ReLU(inplace=True),
        ]
        for _ in range(num_convs_patch_embed):
            convs += [
                nn.Conv2d(stem_width, stem_width, 3, 1, 1, bias=False),
                nn.BatchNorm2d(stem_width),
                nn.ReLU(inplace=True),
            ]
        half = patch_size // 2
        convs.append(nn.Conv2d(stem_width, embed_dim, half, half))
        self.patch_embed = nn.Sequential(*convs)
        self.pos_embed = nn.Parameter(
            torch.zeros(1, self.grid_size[0] * self.grid_size[1], embed_dim)
        )
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = drop_path_rates(drop_path_rate, [depth])[0]
        self.layers = nn.ModuleList(
            PlainMambaLayer(
                embed_dim, self.grid_size, d_state, i in layers_with_dwconv, dpr[i], chunk_size
            )
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.num_features = embed_dim
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = [
            FeatureInfo(embed_dim, patch_size, f"layers.{i}") for i in range(depth)
        ]
        self.cam_target = "norm"
        # truncated-normal Linear weights, except dt_proj, which keeps Mamba's dt init
        dt_projs = {id(layer.mamba.ssm.dt_proj) for layer in self.layers}
        for m in self.modules():
            if isinstance(m, nn.Linear) and id(m) not in dt_projs:
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"} | {
            n for n, _ in self.named_parameters() if n.endswith(("A_log", ".D", "direction_Bs"))
        }

    def tokens_to_map(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.ndim == 4:
            return tokens
        h, w = self.grid_size
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = self.pos_drop(x + self.pos_embed)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x.mean(1))
        return x if pre_logits else self.head(x)


_PAPER = "PlainMamba: Improving Non-Hierarchical Mamba in Visual Recognition"
_SRC = "PlainMamba official README (ChenhongyiYang/PlainMamba), ImageNet-1k 224px"


# The paper's counts match these models without their 1000-class head (L1 7.36M, L2
# 25.76M, L3 50.51M by our count); with the head they are 7.55M, 26.15M and 50.96M, so
# the variants are registered as "other" rather than canonical.
_NOTE = "paper's params exclude the classifier head; ours with head: {}M"


def _card(params: float, top1: float, ours: float) -> ModelCard:
    return ModelCard(
        "plainmamba",
        _PAPER,
        2024,
        "ssm",
        scale="other",
        params_m=params,
        top1=top1,
        source=_SRC,
        notes=_NOTE.format(ours),
    )


@register_model(_card(7.3, 77.9, 7.55))
def plainmamba_l1(**kwargs: Any) -> PlainMamba:
    cfg = dict(embed_dim=192, depth=24, num_convs_patch_embed=1, layers_with_dwconv=(0,))
    return build_model(PlainMamba, cfg, kwargs)


@register_model(_card(25.7, 81.6, 26.15))
def plainmamba_l2(**kwargs: Any) -> PlainMamba:
    return build_model(PlainMamba, dict(embed_dim=384, depth=24, num_convs_patch_embed=2), kwargs)


@register_model(_card(50.5, 82.3, 50.96))
def plainmamba_l3(**kwargs: Any) -> PlainMamba:
    return build_model(PlainMamba, dict(embed_dim=448, depth=36, num_convs_patch_embed=2), kwargs)


@register_model(
    ModelCard(
        "plainmamba",
        _PAPER,
        2024,
        "ssm",
        scale="cpu",
        img_size=32,
        notes="patch 4 (8x8 grid), stem width 32",
    )
)
def plainmamba_pico(**kwargs: Any) -> PlainMamba:
    cfg = dict(
        patch_size=4,
        embed_dim=48,
        depth=4,
        num_convs_patch_embed=0,
        layers_with_dwconv=(0,),
        stem_width=32,
        d_state=8,
        img_size=32,
    )
    return build_model(PlainMamba, cfg, kwargs)
