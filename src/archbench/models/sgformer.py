"""SG-Former: self-guided attention with evolving token reallocation.

*SG-Former: Self-guided Transformer with Evolving Token Reallocation* (Ren, Yang, Liu &
Wang, ICCV 2023). Architecture of the official release (OliverRensu/SG-Former,
``sgformer.py``):

- stem: three 3x3 convs (strides 2, 1, 2) each followed by GroupNorm(1), GELU between,
  then LayerNorm over the tokens, plus a learnable position embedding initialised with
  2-D sin-cos; between stages a 1x1 -> 3x3/2 depthwise -> 1x1 conv merge (GroupNorm(1)
  after each, GELU between); each stage ends with a LayerNorm;
- in stages whose reduction ratio ``sr`` is > 1 the blocks alternate:
  **hybrid-scale attention** (even blocks): half of the heads attend globally to the map
  downsampled by an ``sr x sr`` strided conv (+ LayerNorm, GELU), the other half locally
  inside ``window x window`` windows at full resolution. Their attention maps, averaged
  over heads and queries, give each pixel a **significance**: the global attention a
  pixel's region receives plus the local attention the pixel receives in its window.
  **Self-guided attention** (odd blocks) reallocates the keys and values with it: the
  tokens are sorted by the previous block's significance; the least significant quarter is
  merged in large groups, the middle half in medium groups and the most significant
  quarter in small groups (two halves at ``sr = 2``), each group into one token by a
  learned weighted sum (a Linear over the group). Half of the heads use the row-major
  token order, half the column-major one (their own key-value projections). So salient
  regions keep fine-grained tokens while the others are summarised coarsely, and every
  query still sees the whole image;
- the last stage (``sr = 1``) uses full multi-head self-attention;
- every attention adds a locally-enhanced term (Linear then 3x3 depthwise conv of the
  input) before its output projection; MLPs are fc -> GELU(x + 3x3 depthwise(x)) -> fc.

The merge group sizes follow the release, which ties them to 224x224 inputs (group sizes
196 / 56 / 28 at ``sr = 8``, 49 / 14 / 7 at ``sr = 4``, 2 / 1 at ``sr = 2``); they are
``merge_groups`` here so CPU variants can choose ones that divide their grids. The model
takes only its ``img_size`` (the position embedding and the merge linears fix the grid).
Where archbench departs from the release: sorting is stable (the release's
``torch.sort`` breaks ties arbitrarily), and a significance map is never passed from the
last block of one stage into the next stage (the release's depths never do that).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import DropPath, drop_path_rates
from ._base import FeatureInfo, ImageClassifier
from ._registry import ModelCard, build_model, register_model

__all__ = ["SGFormer", "merge_by_significance", "split_sizes"]


def split_sizes(num_tokens: int, num_parts: int) -> list[int]:
    """Sizes of the significance-sorted parts: quarter/half/quarter for three, halves for two."""
    if num_parts == 3:
        return [num_tokens // 4, num_tokens // 2, num_tokens - num_tokens // 4 - num_tokens // 2]
    if num_parts == 2:
        return [num_tokens // 2, num_tokens - num_tokens // 2]
    raise ValueError(f"token reallocation uses 2 or 3 significance parts, got {num_parts}")


def merge_by_significance(
    x: torch.Tensor, significance: torch.Tensor, mergers: nn.ModuleList
) -> torch.Tensor:
    """Sort tokens (B, N, C) by ascending ``significance`` (B, N), split them into parts
    (:func:`split_sizes`) and merge each run of ``g`` consecutive sorted tokens of part ``p``
    into one with ``mergers[p]`` (a Linear(g, 1) over the group)."""
    b, n, c = x.shape
    order = torch.argsort(significance, dim=1, stable=True)
    tokens = torch.gather(x, 1, order.unsqueeze(-1).expand(b, n, c))
    out = []
    for part, merger in zip(torch.split(tokens, split_sizes(n, len(mergers)), dim=1), mergers):
        g = merger.in_features
        groups = part.reshape(b, part.shape[1] // g, g, c).transpose(2, 3)  # (B, M, C, g)
        out.append(merger(groups).squeeze(-1))
    return torch.cat(out, dim=1)


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, _ = t.shape
    return t.reshape(b, n, heads, -1).transpose(1, 2)


def _windows(t: torch.Tensor, h: int, w: int, ws: int) -> torch.Tensor:
    """(B, G, N, d) -> (B, G, nW, ws*ws, d), windows in row-major order."""
    b, g, _, d = t.shape
    t = t.reshape(b, g, h // ws, ws, w // ws, ws, d).permute(0, 1, 2, 4, 3, 5, 6)
    return t.reshape(b, g, -1, ws * ws, d)


def _unwindows(t: torch.Tensor, h: int, w: int, ws: int) -> torch.Tensor:
    """Inverse of :func:`_windows` for (..., nW, ws*ws, d) -> (..., H*W, d)."""
    *lead, _, _, d = t.shape
    t = t.reshape(*lead, h // ws, w // ws, ws, ws, d).transpose(-4, -3)
    return t.reshape(*lead, h * w, d)


class SGAttention(nn.Module):
    """One of SG-Former's three attentions: ``"full"`` (sr = 1), ``"hybrid"`` (global over
    the sr-downsampled map + windowed local; returns the significance map) or ``"guided"``
    (keys and values from tokens merged according to the given significance)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        kind: str,
        sr_ratio: int = 1,
        window_size: int = 7,
        merge_groups: tuple[int, ...] = (),
        qkv_bias: bool = True,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        if kind != "full" and num_heads % 2:
            raise ValueError(f"hybrid and guided attention split the heads in two: {num_heads}")
        self.dim, self.num_heads, self.kind = dim, num_heads, kind
        self.sr_ratio, self.window_size = sr_ratio, window_size
        self.scale = (dim // num_heads) ** -0.5
        if kind == "full":
            self.q = nn.Linear(dim, dim, bias=qkv_bias)
            self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        elif kind == "hybrid":
            self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)
            self.act = nn.GELU()
            self.q1 = nn.Linear(dim, dim // 2, bias=qkv_bias)
            self.kv1 = nn.Linear(dim, dim, bias=qkv_bias)
            self.q2 = nn.Linear(dim, dim // 2, bias=qkv_bias)
            self.kv2 = nn.Linear(dim, dim, bias=qkv_bias)
        elif kind == "guided":
            self.q = nn.Linear(dim, dim, bias=qkv_bias)
            self.kv1 = nn.Linear(dim, dim, bias=qkv_bias)
            self.kv2 = nn.Linear(dim, dim, bias=qkv_bias)
            self.mergers = nn.ModuleList(nn.Linear(g, 1) for g in merge_groups)
        else:
            raise ValueError(f"kind must be 'full', 'hybrid' or 'guided', got {kind!r}")
        self.lepe_linear = nn.Linear(dim, dim)
        self.lepe_conv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.proj = nn.Linear(dim, dim)

    def _attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        attn = (q @ k.transpose(-2, -1) * self.scale).softmax(-1)
        return attn @ v, attn

    def forward(
        self, x: torch.Tensor, h: int, w: int, significance: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, n, c = x.shape
        lepe = self.lepe_linear(x).transpose(1, 2).reshape(b, c, h, w)
        lepe = self.lepe_conv(lepe).flatten(2).transpose(1, 2)
        half = self.num_heads // 2
        new_significance = None
        if self.kind == "full":
            k, v = self.kv(x).chunk(2, dim=-1)
            out, _ = self._attend(*(_heads(t, self.num_heads) for t in (self.q(x), k, v)))
            out = out.transpose(1, 2).reshape(b, n, c)
        elif self.kind == "hybrid":
            out, new_significance = self._hybrid(x, h, w, half)
        else:
            if significance is None:
                raise ValueError("self-guided attention needs the previous block's significance")
            q = _heads(self.q(x), self.num_heads)
            x_cols = x.reshape(b, h, w, c).transpose(1, 2).reshape(b, n, c)
            sig_cols = significance.reshape(b, h, w).transpose(1, 2).reshape(b, n)
            k1, v1 = self.kv1(merge_by_significance(x, significance, self.mergers)).chunk(2, -1)
            k2, v2 = self.kv2(merge_by_significance(x_cols, sig_cols, self.mergers)).chunk(2, -1)
            k = torch.cat([_heads(k1, half), _heads(k2, half)], dim=1)
            v = torch.cat([_heads(v1, half), _heads(v2, half)], dim=1)
            out, _ = self._attend(q, k, v)
            out = out.transpose(1, 2).reshape(b, n, c)
        return self.proj(out + lepe), new_significance

    def _hybrid(self, x: torch.Tensor, h: int, w: int, half: int) -> tuple[torch.Tensor, ...]:
        b, n, c = x.shape
        sr, ws = self.sr_ratio, self.window_size
        # global: half of the heads attend to the sr-downsampled map
        reduced = self.sr(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
        k1, v1 = self.kv1(self.act(self.norm(reduced))).chunk(2, -1)
        x1, attn1 = self._attend(_heads(self.q1(x), half), _heads(k1, half), _heads(v1, half))
        x1 = x1.transpose(1, 2).reshape(b, n, c // 2)
        glob = attn1.detach().mean(1).mean(1).reshape(b, 1, h // sr, w // sr)
        glob = F.interpolate(glob, size=(h, w), mode="nearest").reshape(b, n)
        # local: the other half attend inside ws x ws windows at full resolution
        k2, v2 = self.kv2(x).chunk(2, -1)
        q2, k2, v2 = (_windows(_heads(t, half), h, w, ws) for t in (self.q2(x), k2, v2))
        x2, attn2 = self._attend(q2, k2, v2)  # (B, G/2, nW, ws*ws, d)
        x2 = _unwindows(x2, h, w, ws).transpose(1, 2).reshape(b, n, c // 2)
        local = _unwindows(attn2.detach().mean(1).mean(-2).unsqueeze(-1), h, w, ws)
        significance = local.reshape(b, n) + glob
        return torch.cat([x1, x2], dim=-1), significance


class SGBlock(nn.Module):
    """Pre-norm transformer block with an SG-Former attention and a depthwise-conv MLP."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        kind: str,
        sr_ratio: int,
        window_size: int,
        merge_groups: tuple[int, ...],
        mlp_ratio: float,
        drop_path: float,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SGAttention(dim, num_heads, kind, sr_ratio, window_size, merge_groups)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def mlp(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = self.fc1(x)
        b, n, c = x.shape
        conv = self.dwconv(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
        return self.fc2(self.act(x + conv))

    def forward(
        self, x: torch.Tensor, h: int, w: int, significance: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        out, significance = self.attn(self.norm1(x), h, w, significance)
        x = x + self.drop_path(out)
        return x + self.drop_path(self.mlp(self.norm2(x), h, w)), significance


def _conv_gn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.GroupNorm(1, cout),
    ]


def sincos_2d(dim: int, gh: int, gw: int) -> torch.Tensor:
    """MAE's 2-D sin-cos table (gh * gw, dim): first half the column, second half the row."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(
        torch.arange(gh, dtype=torch.float64), torch.arange(gw, dtype=torch.float64), indexing="ij"
    )
    parts = []
    for pos in (cols, rows):
        ang = pos.reshape(-1, 1) * omega
        parts += [ang.sin(), ang.cos()]
    return torch.cat(parts, dim=1).float()


class SGStage(nn.Module):
    """Downsampling (stem or merge), blocks, LayerNorm; NCHW in and out."""

    def __init__(self, down: nn.Module, blocks: list[SGBlock], dim: int, stem_norm: bool) -> None:
        super().__init__()
        self.down = down
        self.down_norm = nn.LayerNorm(dim) if stem_norm else nn.Identity()
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pos_embed: nn.Parameter | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(x)
        b, c, h, w = x.shape
        x = self.down_norm(x.flatten(2).transpose(1, 2))
        if self.pos_embed is not None:
            x = x + self.pos_embed
        significance = None
        for blk in self.blocks:
            x, significance = blk(x, h, w, significance)
        return self.norm(x).transpose(1, 2).reshape(b, c, h, w)


_RELEASE_GROUPS = {8: (196, 56, 28), 4: (49, 14, 7), 2: (2, 1)}


class SGFormer(ImageClassifier):
    width_args = ("embed_dims",)
    depth_args = ("depths",)

    def __init__(
        self,
        depths: tuple[int, ...] = (2, 4, 16, 1),
        embed_dims: tuple[int, ...] = (64, 128, 256, 512),
        num_heads: tuple[int, ...] = (2, 4, 8, 16),
        sr_ratios: tuple[int, ...] = (8, 4, 2, 1),
        window_size: int | tuple[int, ...] = 7,
        merge_groups: tuple[tuple[int, ...], ...] | None = None,
        mlp_ratio: float = 4.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int | tuple[int, int] = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        n = len(depths)
        if not n or any(len(t) != n for t in (embed_dims, num_heads, sr_ratios)):
            raise ValueError(
                f"depths, embed_dims, num_heads and sr_ratios need one entry per stage, got "
                f"{depths}, {embed_dims}, {num_heads}, {sr_ratios}"
            )
        windows = (window_size,) * n if isinstance(window_size, int) else tuple(window_size)
        if merge_groups is None:
            unknown = [s for s in sr_ratios if s > 1 and s not in _RELEASE_GROUPS]
            if unknown:
                raise ValueError(
                    f"no release merge groups for sr_ratio {unknown}: pass merge_groups"
                )
            merge_groups = tuple(_RELEASE_GROUPS.get(s, ()) for s in sr_ratios)
        if len(windows) != n or len(merge_groups) != n:
            raise ValueError("window_size and merge_groups need one entry per stage")
        ih, iw = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.fixed_input_size = (ih, iw)
        self.img_size_multiple = 4 * 2 ** (n - 1)
        self.rebuild_note = "(the position embedding and token merging depend on the grid)"
        self.num_classes, self.in_chans = num_classes, in_chans
        d = embed_dims
        dprs = drop_path_rates(drop_path_rate, depths)
        self.stages = nn.ModuleList()
        self.feature_info = []
        for i in range(n):
            red = 4 * 2**i
            gh, gw = ih // red, iw // red
            self._check_grid(i, ih, iw, red, sr_ratios[i], windows[i], merge_groups[i], depths[i])
            if i == 0:
                half = d[0]
                down = nn.Sequential(
                    *_conv_gn(in_chans, half, 3, 2),
                    nn.GELU(),
                    *_conv_gn(half, half, 3),
                    nn.GELU(),
                    *_conv_gn(half, d[0], 3, 2),
                )
            else:
                down = nn.Sequential(
                    *_conv_gn(d[i - 1], d[i], 1),
                    nn.GELU(),
                    *_conv_gn(d[i], d[i], 3, 2, groups=d[i]),
                    nn.GELU(),
                    *_conv_gn(d[i], d[i], 1),
                )
            blocks = []
            for j in range(depths[i]):
                kind = "full" if sr_ratios[i] == 1 else ("guided" if j % 2 else "hybrid")
                blocks.append(
                    SGBlock(
                        d[i],
                        num_heads[i],
                        kind,
                        sr_ratios[i],
                        windows[i],
                        merge_groups[i],
                        mlp_ratio,
                        dprs[i][j],
                    )
                )
            self.stages.append(SGStage(down, blocks, d[i], stem_norm=i == 0))
            self.feature_info.append(FeatureInfo(d[i], red, f"stages.{i}"))
            if i == 0:
                pos = nn.Parameter(torch.zeros(1, gh * gw, d[0]))
                self.stages[0].pos_embed = pos
        self.cam_target = f"stages.{n - 1}"
        self.num_features = d[-1]
        self.head_drop = nn.Dropout(drop_rate)
        self.reset_classifier(num_classes)
        self.apply(self._init_weights)
        with torch.no_grad():
            self.stages[0].pos_embed.copy_(sincos_2d(d[0], ih // 4, iw // 4)[None])

    @staticmethod
    def _check_grid(
        i: int, ih: int, iw: int, red: int, sr: int, ws: int, groups: tuple[int, ...], depth: int
    ) -> None:
        if ih % red or iw % red:
            raise ValueError(
                f"SGFormer: img_size {(ih, iw)} must be a multiple of {red} (stage {i + 1} "
                f"grid); nearest: {ih // red * red or red} or {(ih // red + 1) * red}"
            )
        gh, gw = ih // red, iw // red
        if sr == 1:
            return
        if gh % sr or gw % sr or gh % ws or gw % ws:
            raise ValueError(
                f"SGFormer stage {i + 1}: its {gh}x{gw} grid must be divisible by sr_ratio "
                f"{sr} and window_size {ws}; choose an img_size, sr_ratios or window_size "
                "that divide it"
            )
        if depth > 1:
            sizes = split_sizes(gh * gw, len(groups))
            if any(s % g for s, g in zip(sizes, groups)):
                raise ValueError(
                    f"SGFormer stage {i + 1}: merge_groups {groups} must divide the "
                    f"significance parts {sizes} of its {gh * gw} tokens"
                )

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d) and m.weight.device.type != "meta":
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def reset_classifier(self, num_classes: int) -> None:
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        for stage in self.stages:
            x = stage(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((2, 3))
        return x if pre_logits else self.head(self.head_drop(x))


_PAPER = "SG-Former: Self-guided Transformer with Evolving Token Reallocation"
_SRC = "SG-Former paper Table (ImageNet-1K, 224px) / official OliverRensu/SG-Former"


def _card(params: float | None, gmacs: float | None, top1: float | None, **kw: Any) -> ModelCard:
    return ModelCard(
        "sgformer",
        _PAPER,
        2023,
        "vit",
        params_m=params,
        gmacs=gmacs,
        top1=top1,
        source=_SRC if params else "",
        **kw,
    )


@register_model(_card(22.5, 4.8, 83.2))
def sgformer_s(**kwargs: Any) -> SGFormer:
    return build_model(SGFormer, dict(depths=(2, 4, 16, 1)), kwargs)


@register_model(_card(38.7, 7.5, 84.1))
def sgformer_m(**kwargs: Any) -> SGFormer:
    return build_model(SGFormer, dict(depths=(2, 6, 28, 2)), kwargs)


@register_model(
    _card(
        77.95,
        15.6,
        84.7,
        notes="params counted from the release's sgformer_b configuration; the paper's own "
        "figure for SG-Former-B was not available to check against",
    )
)
def sgformer_b(**kwargs: Any) -> SGFormer:
    cfg = dict(depths=(4, 6, 24, 2), embed_dims=(96, 192, 384, 768), num_heads=(4, 6, 12, 24))
    return build_model(SGFormer, cfg, kwargs)


@register_model(
    _card(
        None,
        None,
        None,
        scale="cpu",
        img_size=32,
        notes="32x32 gives 8, 4, 2, 1 grids; windows 4 / 2 / 2, merge groups sized to them",
    )
)
def sgformer_pico(**kwargs: Any) -> SGFormer:
    cfg = dict(
        depths=(2, 2, 2, 1),
        embed_dims=(16, 32, 64, 96),
        num_heads=(2, 2, 4, 4),
        sr_ratios=(4, 2, 2, 1),
        window_size=(4, 2, 2, 1),
        merge_groups=((16, 4, 2), (4, 2, 1), (2, 1), ()),
        img_size=32,
    )
    return build_model(SGFormer, cfg, kwargs)
