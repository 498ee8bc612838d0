"""OverLoCK: overview first, look closely next, with context-mixing dynamic kernels (ContMix).

*OverLoCK: An Overview-first-Look-Closely-next ConvNet with Context-Mixing Dynamic Kernels*
(Lou & Yu, CVPR 2025). Architecture of the official release (LMMMEng/OverLoCK,
``models/overlock.py``):

- **Base-Net**: a four-conv stem (stride 4) and three stages of RepConvBlocks (residual 3x3
  depthwise conv, then LayerNorm -> dilated reparam large-kernel depthwise conv -> BN ->
  SE -> 1x1 -> GELU -> residual 3x3 depthwise -> GRN -> 1x1, with a per-channel scale and
  bias on the shortcut in stages 3-4), strided 3x3 conv-BN downsampling between stages;
- **Overview-Net**: one more downsampling and RepConvBlock stage (stride 32) gives a coarse
  context; a 1x1 conv projects it to C/4 channels, the *top-down context*;
- **Focus-Net**: Dynamic (ContMix) blocks at stride 16, then a context-aware downsampling
  and more blocks at stride 32. Each block concatenates the features with the context
  (which every block updates and re-mixes with the original overview context through two
  per-channel scales), and the ContMix layer computes, per pixel and head, the affinity of
  its query with the context pooled to 7x7 regions; a 1x1 layer maps those 49 affinities
  to the taps of a small (5x5) and a large (kxk) kernel, which after relative position
  biases and a softmax aggregate the pixel's neighbourhood (half of the channels with
  each kernel; windows are shifted inside the map at borders, as in neighbourhood
  attention). A dilated reparam depthwise conv adds a static large kernel, SE and a SiLU
  gate follow, then an MLP.
- head: 1x1 conv to 1024, BN, SiLU, global average pool, linear. The release also trains
  an auxiliary classifier on the Overview-Net's output (BN, pool, linear) with weight 0.4
  (``--aux-loss-ratio``); here ``aux_head=True`` builds it and ``aux_loss(targets)``
  returns its weighted soft cross-entropy for the training task to add.

The release's neighbourhood aggregation comes from NATTEN (``na2d_av``), a CUDA/C++
package; archbench writes it with gathers over clamped window starts (no dependency,
slower, same result). Like the release, a map smaller than the large kernel is resized
bilinearly to the kernel size for the ContMix aggregation and average-pooled back.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import DropPath, LayerNorm2d
from ._base import FeatureInfo, ImageClassifier
from ._registry import ModelCard, build_model, register_model
from .unireplknet import DilatedReparamBlock

__all__ = ["ContMixBlock", "OverLoCK", "neighborhood_aggregate", "window_starts"]

# the release's dilated branches (kernel sizes, dilations) per large kernel size; they
# differ from UniRepLKNet's table (an extra undilated 5x5 / 7x7 branch)
_OVERLOCK_BRANCHES: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {
    19: ((5, 7, 9, 9, 3, 3, 3), (1, 1, 1, 2, 4, 5, 7)),
    17: ((5, 7, 9, 3, 3, 3), (1, 1, 2, 4, 5, 7)),
    15: ((5, 7, 7, 3, 3, 3), (1, 1, 2, 3, 5, 7)),
    13: ((5, 7, 7, 3, 3, 3), (1, 1, 2, 3, 4, 5)),
    11: ((5, 7, 5, 3, 3, 3), (1, 1, 2, 3, 4, 5)),
    9: ((5, 7, 5, 3, 3), (1, 1, 2, 3, 4)),
    7: ((5, 3, 3, 3), (1, 1, 2, 3)),
    5: ((3, 3), (1, 2)),
}


class OverLoCKDilatedBlock(DilatedReparamBlock):
    """UniRepLKNet's dilated reparam block with OverLoCK's branch table (same fusion)."""

    branches = _OVERLOCK_BRANCHES


def window_starts(size: int, kernel: int, device: torch.device | None = None) -> torch.Tensor:
    """First row (or column) of each position's kxk window, shifted to stay inside the map."""
    pos = torch.arange(size, device=device)
    return (pos - kernel // 2).clamp(0, size - kernel)


def neighborhood_aggregate(attn: torch.Tensor, value: torch.Tensor, kernel: int) -> torch.Tensor:
    """``out[..., i, j, :] = sum_ab attn[..., i, j, a*k + b] * value[..., si + a, sj + b, :]``.

    attn (B, G, H, W, k*k), value (B, G, H, W, C) -> (B, G, H, W, C); ``si``, ``sj`` are
    the window starts (:func:`window_starts`), so each window lies inside the map (NATTEN's
    neighbourhood attention). Needs H, W >= k.
    """
    b, g, h, w, c = value.shape
    rows = window_starts(h, kernel, value.device)[:, None] + torch.arange(
        kernel, device=value.device
    )
    cols = window_starts(w, kernel, value.device)[:, None] + torch.arange(
        kernel, device=value.device
    )
    # accumulate one kernel row at a time: (B, G, H, W, k, C) instead of k*k copies at once
    out = value.new_zeros(b, g, h, w, c)
    a = attn.reshape(b, g, h, w, kernel, kernel)
    for r in range(kernel):
        rows_v = value[:, :, rows[:, r]]  # (B, G, H, W, C): row si + r for every i
        patch = rows_v[:, :, :, cols]  # (B, G, H, W, k, C)
        out = out + (a[..., r, :, None] * patch).sum(-2)
    return out


def relative_position_bias(table: torch.Tensor, h: int, w: int, kernel: int) -> torch.Tensor:
    """Bias of each pixel's window taps, (G, H, W, k*k), from a (G, 2k-1, 2k-1) table indexed
    by the tap's offset from the pixel."""
    dev = table.device
    ar = torch.arange(kernel, device=dev)
    dy = window_starts(h, kernel, dev)[:, None] + ar - torch.arange(h, device=dev)[:, None]
    dx = window_starts(w, kernel, dev)[:, None] + ar - torch.arange(w, device=dev)[:, None]
    bias = table[:, dy[:, None, :, None] + kernel - 1, dx[None, :, None, :] + kernel - 1]
    return bias.reshape(table.shape[0], h, w, kernel * kernel)


class ScaleBias(nn.Module):
    """Per-channel scale and bias of an NCHW map (the release's LayerScale)."""

    def __init__(self, dim: int, init_value: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((dim,), float(init_value)))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight[:, None, None] + self.bias[:, None, None]


class GRN2d(nn.Module):
    """Global Response Normalization (ConvNeXt V2) on NCHW maps."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, dim, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = torch.linalg.vector_norm(x, ord=2, dim=(-2, -1), keepdim=True)
        nx = gx / (gx.mean(dim=1, keepdim=True) + 1e-6)
        return (self.gamma * nx + 1) * x + self.beta


class ResDWConv(nn.Conv2d):
    """``x + depthwise_kxk(x)``."""

    def __init__(self, dim: int, kernel_size: int = 3) -> None:
        super().__init__(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + super().forward(x)


class SE(nn.Sequential):
    """Squeeze-excitation with hidden width max(16, C/8), GELU and a sigmoid gate."""

    def __init__(self, dim: int) -> None:
        inner = max(16, dim // 8)
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(dim, inner, 1),
            nn.GELU(),
            nn.Conv2d(inner, dim, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * super().forward(x)


def _conv_bn(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]


class RepConvBlock(nn.Module):
    """Base-Net / Overview-Net block (large static kernel), residual scaled when ``layer_scale``."""

    def __init__(
        self, dim: int, kernel_size: int, mlp_ratio: float, layer_scale: bool, drop_path: float
    ) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.dwconv = ResDWConv(dim)
        self.proj = nn.Sequential(
            LayerNorm2d(dim),
            OverLoCKDilatedBlock(dim, kernel_size),
            nn.BatchNorm2d(dim),
            SE(dim),
            nn.Conv2d(dim, hidden, 1),
            nn.GELU(),
            ResDWConv(hidden),
            GRN2d(hidden),
            nn.Conv2d(hidden, dim, 1),
        )
        self.ls = ScaleBias(dim) if layer_scale else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dwconv(x)
        return self.ls(x) + self.drop_path(self.proj(x))


class ContMixBlock(nn.Module):
    """Focus-Net block: the context-mixing dynamic convolution (ContMix) guided by the
    overview context, then an MLP; carries (features, context) from block to block."""

    def __init__(
        self,
        dim: int,
        ctx_dim: int,
        kernel_size: int,
        smk_size: int,
        num_heads: int,
        mlp_ratio: float,
        drop_path: float = 0.0,
        is_first: bool = False,
        is_last: bool = False,
        pool_size: int = 7,
    ) -> None:
        super().__init__()
        groups = num_heads * 2  # the release doubles the configured head count
        if dim % (2 * groups):
            raise ValueError(
                f"ContMix width {dim} must be divisible by 4 x num_heads ({2 * groups}): half "
                "the channels per kernel, split over the heads"
            )
        if smk_size > kernel_size or smk_size % 2 == 0:
            raise ValueError(f"smk_size must be odd and <= kernel_size, got {smk_size}")
        out_dim = dim + ctx_dim
        self.dim, self.ctx_dim, self.groups = dim, ctx_dim, groups
        self.kernel_size, self.smk_size = kernel_size, smk_size
        self.scale = (dim // groups) ** -0.5
        self.is_first, self.is_last = is_first, is_last
        if not is_first:
            self.x_scale = ScaleBias(ctx_dim)
            self.h_scale = ScaleBias(ctx_dim)
        self.dwconv1 = ResDWConv(out_dim)
        self.norm1 = LayerNorm2d(out_dim)
        self.fusion = nn.Sequential(
            nn.Conv2d(out_dim, out_dim, 3, padding=1, groups=out_dim),
            nn.BatchNorm2d(out_dim),
            nn.GELU(),
            nn.Conv2d(out_dim, dim, 1),
            GRN2d(dim),
        )
        self.weight_query = nn.Sequential(*_conv_bn(dim, dim // 2))
        self.weight_key = nn.Sequential(
            nn.AdaptiveAvgPool2d(pool_size), *_conv_bn(ctx_dim, dim // 2)
        )
        self.weight_proj = nn.Conv2d(pool_size**2, kernel_size**2 + smk_size**2, 1)
        self.dyconv_proj = nn.Sequential(*_conv_bn(dim, dim))
        self.lepe = nn.Sequential(OverLoCKDilatedBlock(dim, kernel_size), nn.BatchNorm2d(dim))
        self.se_layer = SE(dim)
        self.gate = nn.Sequential(*_conv_bn(dim, dim), nn.SiLU())
        self.proj = nn.Sequential(nn.BatchNorm2d(dim), nn.Conv2d(dim, out_dim, 1))
        self.dwconv2 = ResDWConv(out_dim)
        self.norm2 = LayerNorm2d(out_dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Conv2d(out_dim, hidden, 1),
            nn.GELU(),
            ResDWConv(hidden),
            GRN2d(hidden),
            nn.Conv2d(hidden, out_dim, 1),
        )
        self.ls1 = ScaleBias(out_dim)
        self.ls2 = ScaleBias(out_dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.rpb1 = nn.Parameter(torch.zeros(groups, 2 * smk_size - 1, 2 * smk_size - 1))
        self.rpb2 = nn.Parameter(torch.zeros(groups, 2 * kernel_size - 1, 2 * kernel_size - 1))

    def dynamic_kernels(self, x_f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-pixel softmax kernels (B, G, H, W, s*s) and (B, G, H, W, k*k) from the
        normalized features-and-context map ``x_f``: query-context affinities over the
        pooled regions, mapped to kernel taps, plus relative position biases."""
        b, _, h, w = x_f.shape
        query, key = torch.split(x_f, [self.dim, self.ctx_dim], dim=1)
        g = self.groups
        q = (self.weight_query(query) * self.scale).reshape(b, g, -1, h * w)
        k = self.weight_key(key).reshape(b, g, q.shape[2], -1)
        affinity = torch.einsum("bgcn,bgcl->blgn", q, k)  # (B, regions, G, HW)
        taps = self.weight_proj(affinity).reshape(b, -1, g, h, w).permute(0, 2, 3, 4, 1)
        small, large = torch.split(taps, [self.smk_size**2, self.kernel_size**2], dim=-1)
        small = small + relative_position_bias(self.rpb1, h, w, self.smk_size)
        large = large + relative_position_bias(self.rpb2, h, w, self.kernel_size)
        return small.softmax(-1), large.softmax(-1)

    def contmix(self, x: torch.Tensor, x_f: torch.Tensor) -> torch.Tensor:
        """The dynamic convolution: half of ``x``'s channels with the small kernels, half with
        the large ones, each split over the heads."""
        size = x.shape[-2:]
        h, w = size
        k = self.kernel_size
        resized = min(h, w) < k
        if resized:  # the release's route for maps smaller than the kernel
            new = (k, int(k / h * w)) if h < w else (int(k / w * h), k)
            x = F.interpolate(x, size=new, mode="bilinear", align_corners=False)
            x_f = F.interpolate(x_f, size=new, mode="bilinear", align_corners=False)
            h, w = new
        small, large = self.dynamic_kernels(x_f)
        b = x.shape[0]
        value = x.reshape(b, 2, self.groups, -1, h, w).permute(1, 0, 2, 4, 5, 3)
        out = torch.cat(
            [
                neighborhood_aggregate(small, value[0], self.smk_size),
                neighborhood_aggregate(large, value[1], k),
            ],
            dim=1,
        )  # (B, 2G, H, W, C')
        out = out.permute(0, 1, 4, 2, 3).reshape(b, -1, h, w)
        return F.adaptive_avg_pool2d(out, size) if resized else out

    def forward(
        self, x: torch.Tensor, ctx: torch.Tensor, ctx_orig: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.is_first:
            ctx = self.x_scale(ctx) + self.h_scale(ctx_orig)
        x_f = self.dwconv1(torch.cat([x, ctx], dim=1))
        identity = x_f
        x_f = self.norm1(x_f)
        x = self.fusion(x_f)
        gate = self.gate(x)
        lepe = self.lepe(x)
        x = self.dyconv_proj(self.contmix(x, x_f)) + lepe
        x = self.proj(gate * self.se_layer(x))
        x = self.ls1(identity) + self.drop_path(x)
        x = self.dwconv2(x)
        x = self.ls2(x) + self.drop_path(self.mlp(self.norm2(x)))
        if self.is_last:
            return x, None
        x, ctx = torch.split(x, [self.dim, self.ctx_dim], dim=1)
        return x, ctx


class ContextDownsample(nn.Module):
    """Strided 3x3 conv-BN for the features and, separately, for the context."""

    def __init__(self, dim: int, out_dim: int, ctx_dim: int) -> None:
        super().__init__()
        self.x_proj = nn.Sequential(*_conv_bn(dim, out_dim, 3, 2))
        self.h_proj = nn.Sequential(*_conv_bn(ctx_dim, ctx_dim, 3, 2))

    def forward(self, x: torch.Tensor, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x_proj(x), self.h_proj(ctx)


class FocusNet(nn.Module):
    """ContMix blocks at stride 16, the context-aware downsampling, ContMix blocks at stride
    32; the overview context guides every block."""

    def __init__(
        self,
        dim3: int,
        dim4: int,
        ctx_dim: int,
        kernel_sizes: tuple[int, ...],
        smk_size: int,
        num_heads: tuple[int, int],
        mlp_ratio: float,
        depths: tuple[int, int],
        drop_path: list[float],
    ) -> None:
        super().__init__()
        self.stage3 = nn.ModuleList(
            ContMixBlock(
                dim3,
                ctx_dim,
                kernel_sizes[0],
                smk_size,
                num_heads[0],
                mlp_ratio,
                drop_path[i],
                is_first=i == 0,
            )
            for i in range(depths[0])
        )
        self.down = ContextDownsample(dim3, dim4, ctx_dim)
        self.stage4 = nn.ModuleList(
            ContMixBlock(
                dim4,
                ctx_dim,
                kernel_sizes[1],
                smk_size,
                num_heads[1],
                mlp_ratio,
                drop_path[depths[0] + i],
                is_last=i == depths[1] - 1,
            )
            for i in range(depths[1])
        )
        # taps for forward_intermediates: the stride-16 and the final maps
        self.out3, self.out4 = nn.Identity(), nn.Identity()

    def forward(self, x: torch.Tensor, ctx_orig: torch.Tensor) -> torch.Tensor:
        """``x``: the Base-Net's stride-16 map; ``ctx_orig``: the projected overview context."""
        ctx_up = F.interpolate(ctx_orig, size=x.shape[-2:], mode="bilinear", align_corners=False)
        ctx: torch.Tensor | None = ctx_up
        for blk in self.stage3:
            x, ctx = blk(x, ctx, ctx_up)
        x, ctx = self.down(self.out3(x), ctx)
        for blk in self.stage4:
            x, ctx = blk(x, ctx, ctx_orig)
        return self.out4(x)


class OverLoCK(ImageClassifier):
    width_args = ("embed_dims", "projection")
    depth_args = ("depths", "sub_depths")

    def __init__(
        self,
        depths: tuple[int, int, int, int] = (2, 2, 3, 2),
        sub_depths: tuple[int, int] = (6, 2),
        embed_dims: tuple[int, int, int, int] = (56, 112, 256, 336),
        kernel_sizes: tuple[int, int, int, int] = (17, 15, 13, 7),
        mlp_ratio: float = 4.0,
        sub_mlp_ratio: float = 3.0,
        sub_num_heads: tuple[int, int] = (4, 6),
        smk_size: int = 5,
        projection: int = 1024,
        aux_head: bool = True,
        aux_weight: float = 0.4,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if len(depths) != 4 or len(embed_dims) != 4 or len(kernel_sizes) != 4:
            raise ValueError(
                f"depths, embed_dims and kernel_sizes need four entries, got {depths}, "
                f"{embed_dims}, {kernel_sizes}"
            )
        if len(sub_depths) != 2 or len(sub_num_heads) != 2 or min(sub_depths) < 1:
            raise ValueError(
                f"sub_depths and sub_num_heads need two entries (Focus-Net stages 3 and 4; "
                f"depths >= 1), got {sub_depths}, {sub_num_heads}"
            )
        if min(depths) < 1 or embed_dims[-1] % 4:
            raise ValueError(
                f"depths must be >= 1 and embed_dims[-1] a multiple of 4 (the context has "
                f"C/4 channels), got {depths}, {embed_dims}"
            )
        if not aux_weight >= 0:
            raise ValueError(f"aux_weight must be a non-negative number, got {aux_weight}")
        d = embed_dims
        ctx_dim = d[-1] // 4
        self.num_classes, self.in_chans = num_classes, in_chans
        self.aux_weight, self.drop_rate = float(aux_weight), drop_rate
        total = sum(depths) + sum(sub_depths)
        dpr = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]

        def rep_stage(i: int, first: list[nn.Module]) -> nn.Sequential:
            start = sum(depths[:i])
            blocks = [
                RepConvBlock(d[i], kernel_sizes[i], mlp_ratio, i >= 2, dpr[start + j])
                for j in range(depths[i])
            ]
            return nn.Sequential(*first, *blocks)

        half = d[0] // 2
        self.stem = nn.Sequential(
            *_conv_bn(in_chans, half, 3, 2),
            nn.GELU(),
            *_conv_bn(half, half, 3),
            nn.GELU(),
            *_conv_bn(half, d[0], 3, 2),
            nn.GELU(),
            *_conv_bn(d[0], d[0], 3),
        )
        self.stages = nn.ModuleList(
            rep_stage(i, [nn.Sequential(*_conv_bn(d[i - 1], d[i], 3, 2))] if i else [])
            for i in range(3)
        )
        self.overview = rep_stage(3, [nn.Sequential(*_conv_bn(d[2], d[3], 3, 2))])
        self.high_level_proj = nn.Conv2d(d[3], ctx_dim, 1)
        self.focus = FocusNet(
            d[2],
            d[3],
            ctx_dim,
            kernel_sizes[2:],
            smk_size,
            sub_num_heads,
            sub_mlp_ratio,
            sub_depths,
            dpr[sum(depths) :],
        )
        fusion_dim = d[3] + ctx_dim
        self.feature_info = [
            FeatureInfo(d[0], 4, "stages.0"),
            FeatureInfo(d[1], 8, "stages.1"),
            FeatureInfo(d[2], 16, "focus.out3"),
            FeatureInfo(fusion_dim, 32, "focus.out4"),
        ]
        self.cam_target = "focus.out4"
        self.num_features, self.projection = fusion_dim, projection
        self.use_aux = aux_head
        self.aux_out: torch.Tensor | None = None
        self.reset_classifier(num_classes)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def reparameterize(self) -> None:
        """Fold every dilated reparam block into one large kernel with bias (the release's
        ``reparam()``, its deploy structure); call in eval mode."""
        for m in self.modules():
            if isinstance(m, OverLoCKDilatedBlock):
                m.reparameterize()

    def reset_classifier(self, num_classes: int) -> None:
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        self.num_classes = num_classes
        # the release's head: 1x1 conv to ``projection`` -> BN -> SiLU -> pool -> linear;
        # pre-logits are the pooled Focus-Net features, so the projection belongs to the head
        if num_classes:
            self.head = nn.Sequential(
                *_conv_bn(self.num_features, self.projection),
                nn.SiLU(),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(1),
                nn.Dropout(self.drop_rate),
                nn.Linear(self.projection, num_classes),
            )
            self.head.apply(self._init_weights)
        else:
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        d = self.overview[-1].dwconv.in_channels
        self.aux = (
            nn.Sequential(
                nn.BatchNorm2d(d), nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(d, num_classes)
            )
            if self.use_aux and num_classes
            else None
        )
        if self.aux is not None:
            self.aux.apply(self._init_weights)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        overview = self.overview(x)  # overview first
        self.aux_out = self.aux(overview) if self.aux is not None and self.training else None
        return self.focus(x, self.high_level_proj(overview))  # look closely next

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x.mean((2, 3)) if pre_logits else self.head(x)

    def aux_loss(self, targets: torch.Tensor | None = None) -> torch.Tensor | None:
        """``aux_weight`` times the Overview-Net classifier's soft cross-entropy on ``targets``
        ((B, num_classes) soft targets of the last training forward), or None without an
        auxiliary head, outside training or without targets."""
        if self.aux_out is None or not self.training or targets is None:
            return None
        if targets.shape != self.aux_out.shape:
            raise ValueError(
                f"aux_loss needs soft targets of shape {tuple(self.aux_out.shape)} (the last "
                f"batch x num_classes), got {tuple(targets.shape)}"
            )
        logp = torch.log_softmax(self.aux_out.float(), dim=-1)
        return self.aux_weight * -(targets.float() * logp).sum(-1).mean()


_PAPER = "OverLoCK: An Overview-first-Look-Closely-next ConvNet with Context-Mixing Dynamic Kernels"
_SRC = (
    "official LMMMEng/OverLoCK README (ImageNet-1K, 224px: params of the deploy structure "
    "without the auxiliary head, GFLOPs, top-1); card params are the release's train-time "
    "structure with its auxiliary head"
)


def _card(
    train: float | None, deploy: float | None, gmacs: float | None, top1: float | None, **kw: Any
) -> ModelCard:
    if train is None:
        return ModelCard("overlock", _PAPER, 2025, "cnn", **kw)
    return ModelCard(
        "overlock",
        _PAPER,
        2025,
        "cnn",
        params_m=train,
        gmacs=gmacs,
        top1=top1,
        source=_SRC,
        notes=f"card params count the train-time model (dilated branches and BNs, auxiliary "
        f"head); the release reports the reparameterized model without the auxiliary head, "
        f"{deploy}M (extra['params_m_deploy'])",
        extra={"params_m_deploy": deploy},
    )


@register_model(_card(17.31, 16.0, 2.6, 82.7))
def overlock_xt(**kwargs: Any) -> OverLoCK:
    return build_model(OverLoCK, dict(), kwargs)


@register_model(_card(34.99, 33.0, 5.5, 84.2))
def overlock_t(**kwargs: Any) -> OverLoCK:
    cfg = dict(
        depths=(4, 4, 6, 2),
        sub_depths=(12, 2),
        embed_dims=(64, 128, 256, 512),
        sub_num_heads=(4, 8),
    )
    return build_model(OverLoCK, cfg, kwargs)


@register_model(_card(58.31, 56.0, 9.7, 84.8))
def overlock_s(**kwargs: Any) -> OverLoCK:
    cfg = dict(
        depths=(6, 6, 8, 3),
        sub_depths=(16, 3),
        embed_dims=(64, 128, 320, 512),
        sub_num_heads=(8, 16),
    )
    return build_model(OverLoCK, cfg, kwargs)


@register_model(_card(98.01, 95.0, 16.7, 85.1))
def overlock_b(**kwargs: Any) -> OverLoCK:
    cfg = dict(
        depths=(8, 8, 10, 4),
        sub_depths=(20, 4),
        embed_dims=(80, 160, 384, 576),
        sub_num_heads=(6, 9),
    )
    return build_model(OverLoCK, cfg, kwargs)


@register_model(
    _card(
        None,
        None,
        None,
        None,
        scale="cpu",
        img_size=32,
        notes="32x32 gives 8, 4, 2, 1 grids; ContMix resizes the 2x2 and 1x1 maps to its kernel",
    )
)
def overlock_pico(**kwargs: Any) -> OverLoCK:
    cfg = dict(
        depths=(1, 1, 1, 1),
        sub_depths=(2, 1),
        embed_dims=(16, 32, 48, 64),
        kernel_sizes=(7, 5, 5, 5),
        sub_num_heads=(2, 2),
        smk_size=3,
        projection=128,
        aux_head=False,
        img_size=32,
    )
    return build_model(OverLoCK, cfg, kwargs)
