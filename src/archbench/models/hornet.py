"""HorNet: high-order spatial interactions with recursive gated convolution (g^n Conv).

*HorNet: Efficient High-Order Spatial Interactions with Recursive Gated Convolutions*
(Rao et al., NeurIPS 2022). ``g^n Conv`` projects the input to ``2C`` channels, splits
off ``p_0`` (C / 2^(n-1) channels) and a stack ``q_0..q_{n-1}`` that goes through one 7x7
depthwise conv (scaled by ``s``); then ``p_{k+1} = f_k(p_k) * q_k`` recursively, each
``f_k`` a 1x1 conv doubling the width, and a final 1x1 projection. Blocks are
ConvNeXt-like: LN -> g^n Conv -> layer scale, then LN -> MLP 4x -> layer scale. The
interaction order grows 2, 3, 4, 5 over the four stages.

The global-filter variants (``hornet_*_gf``, the paper's "GF" rows) replace the 7x7
depthwise convolution of stages 3 and 4 by the release's ``GlobalLocalFilter``: after a
LayerNorm, half of the channels go through a 3x3 depthwise convolution (no bias) and the
other half through a learnable global filter (2-D real FFT, elementwise product with a
complex weight of the half-spectrum size, inverse FFT, orthonormal scaling); the two
halves are interleaved channel by channel and normalized again. The weight is sized for
the stage's grid at ``img_size`` (14x8 and 7x4 at 224) and resampled bilinearly
(corners aligned) for other grids, as in the release.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import DropPath, LayerNorm2d, Mlp, drop_path_rates
from ..layers.helpers import init_trunc_normal
from ._base import FeatureInfo, ImageClassifier, to_2tuple
from ._registry import ModelCard, build_model, register_model

__all__ = ["GlobalLocalFilter", "GnConv", "HorNet", "HorNetBlock"]


class GlobalLocalFilter(nn.Module):
    """HorNet's global-local filter: LN, then half the channels through a 3x3 depthwise
    convolution and half through a global FFT filter, interleaved, then LN.

    ``grid`` is the (H, W) map the complex weight is sized for (its last axis holds the
    W // 2 + 1 frequencies of the real FFT); other maps resample it.
    """

    def __init__(self, dim: int, grid: tuple[int, int]) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"GlobalLocalFilter needs an even width, got {dim}")
        if min(grid) < 1:
            raise ValueError(f"GlobalLocalFilter grid must be positive, got {grid}")
        half = dim // 2
        self.pre_norm = LayerNorm2d(dim)
        self.dw = nn.Conv2d(half, half, 3, padding=1, groups=half, bias=False)
        self.complex_weight = nn.Parameter(torch.empty(half, grid[0], grid[1] // 2 + 1, 2))
        nn.init.trunc_normal_(self.complex_weight, std=0.02)
        self.post_norm = LayerNorm2d(dim)

    def spectral_weight(self, freq_shape: tuple[int, int]) -> torch.Tensor:
        """The complex filter for a half-spectrum of ``freq_shape`` (resampled if needed)."""
        w = self.complex_weight
        if tuple(w.shape[1:3]) != tuple(freq_shape):
            w = F.interpolate(
                w.permute(3, 0, 1, 2), size=freq_shape, mode="bilinear", align_corners=True
            ).permute(1, 2, 3, 0)
        return torch.view_as_complex(w.float().contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre_norm(x)
        local, glob = torch.chunk(x, 2, dim=1)
        local = self.dw(local)
        h, w = glob.shape[-2:]
        spec = torch.fft.rfft2(glob.float(), dim=(2, 3), norm="ortho")
        spec = spec * self.spectral_weight((spec.shape[-2], spec.shape[-1]))
        glob = torch.fft.irfft2(spec, s=(h, w), dim=(2, 3), norm="ortho").to(local.dtype)
        x = torch.stack((local, glob), dim=2).flatten(1, 2)  # channels interleaved
        return self.post_norm(x)


class GnConv(nn.Module):
    """Recursive gated convolution of order ``order`` (HorNet, Eq. 3-4)."""

    def __init__(
        self,
        dim: int,
        order: int = 5,
        kernel_size: int = 7,
        scale: float = 1.0,
        filter_grid: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if order < 1:
            raise ValueError(f"g^n Conv order must be >= 1, got {order}")
        if dim % (2 ** (order - 1)):
            raise ValueError(f"dim {dim} must be divisible by 2**(order-1) = {2 ** (order - 1)}")
        self.order, self.scale = order, scale
        self.dims = [dim // 2**i for i in range(order)][::-1]  # C/2^(n-1), ..., C/2, C
        self.proj_in = nn.Conv2d(dim, 2 * dim, 1)
        total = sum(self.dims)
        # filter_grid: the global-local filter of the GF variants in place of the 7x7 conv
        self.dwconv: nn.Module = (
            GlobalLocalFilter(total, filter_grid)
            if filter_grid is not None
            else nn.Conv2d(total, total, kernel_size, padding=kernel_size // 2, groups=total)
        )
        self.pws = nn.ModuleList(
            nn.Conv2d(self.dims[i], self.dims[i + 1], 1) for i in range(order - 1)
        )
        self.proj_out = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, q = torch.split(self.proj_in(x), (self.dims[0], sum(self.dims)), dim=1)
        gates = torch.split(self.dwconv(q) * self.scale, self.dims, dim=1)
        x = p * gates[0]
        for pw, gate in zip(self.pws, gates[1:]):
            x = pw(x) * gate
        return self.proj_out(x)


class HorNetBlock(nn.Module):
    """x + gamma1 * gnConv(LN(x)); x + gamma2 * MLP(LN(x)) (HorNet block)."""

    def __init__(
        self,
        dim: int,
        order: int,
        scale: float = 1.0 / 3.0,
        kernel_size: int = 7,
        ls_init_value: float = 1e-6,
        drop_path: float = 0.0,
        filter_grid: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = LayerNorm2d(dim)
        self.gnconv = GnConv(dim, order, kernel_size, scale, filter_grid)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim, act="gelu")
        self.gamma1 = nn.Parameter(ls_init_value * torch.ones(dim))
        self.gamma2 = nn.Parameter(ls_init_value * torch.ones(dim))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.gamma1.view(1, -1, 1, 1) * self.gnconv(self.norm1(x)))
        y = self.gamma2 * self.mlp(self.norm2(x.permute(0, 2, 3, 1)))
        return x + self.drop_path(y.permute(0, 3, 1, 2))


class HorNet(ImageClassifier):
    """HorNet with 7x7 depthwise g^n Conv: 4x4/4 conv-LN stem, LN + 2x2/2 conv downsampling.

    ``orders`` gives the interaction order of each stage (the paper's 2, 3, 4, 5);
    ``global_filter`` marks the stages whose g^n Conv uses the global-local filter (the GF
    variants: the last two).
    """

    # stage i is base_dim * 2**i wide
    width_args = ("base_dim",)
    depth_args = ("depths",)

    def __init__(
        self,
        depths: tuple[int, ...] = (2, 3, 18, 2),
        base_dim: int = 64,
        orders: tuple[int, ...] = (2, 3, 4, 5),
        gn_scale: float = 1.0 / 3.0,
        kernel_size: int = 7,
        stem_stride: int = 4,
        ls_init_value: float = 1e-6,
        global_filter: tuple[bool, ...] | None = None,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if len(depths) != len(orders):
            raise ValueError(f"depths {depths} and orders {orders} need equal lengths")
        if stem_stride < 1:
            raise ValueError(f"stem_stride must be >= 1, got {stem_stride}")
        if global_filter is None:
            global_filter = (False,) * len(depths)
        if len(global_filter) != len(depths):
            raise ValueError(
                f"global_filter {global_filter} needs one flag per stage ({len(depths)})"
            )
        grid = tuple(s // stem_stride for s in to_2tuple(img_size))
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        dims = [base_dim * 2**i for i in range(len(depths))]
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, dims[0], stem_stride, stride=stem_stride), LayerNorm2d(dims[0])
        )
        dprs = drop_path_rates(drop_path_rate, depths)
        reduction = stem_stride
        self.stages = nn.ModuleList()
        self.feature_info = []
        for i, dim in enumerate(dims):
            layers: list[nn.Module] = []
            if i > 0:
                layers.append(
                    nn.Sequential(LayerNorm2d(dims[i - 1]), nn.Conv2d(dims[i - 1], dim, 2, 2))
                )
                reduction *= 2
                grid = (grid[0] // 2, grid[1] // 2)
            if global_filter[i] and min(grid) < 1:
                raise ValueError(
                    f"img_size {img_size} leaves no grid for the global filter of stage {i + 1}"
                )
            fgrid = grid if global_filter[i] else None
            layers += [
                HorNetBlock(dim, orders[i], gn_scale, kernel_size, ls_init_value, d, fgrid)
                for d in dprs[i]
            ]
            self.stages.append(nn.Sequential(*layers))
            self.feature_info.append(FeatureInfo(dim, reduction, f"stages.{i}"))
        # the patchify stem and 2x2/2 downsamplers drop remainders: any size that reaches
        # the last stage works
        self.min_input_size = reduction
        self.num_features = dims[-1]
        self.cam_target = f"stages.{len(dims) - 1}"
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    _init_weights = staticmethod(init_trunc_normal)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.norm(x.mean((2, 3))))
        return x if pre_logits else self.head(x)


_PAPER = "HorNet: Efficient High-Order Spatial Interactions with Recursive Gated Convolutions"
_SRC = (
    "paper Table 1 (ImageNet-1K, 224px, 7x7 g^n Conv: FLOPs, top-1; params rounded to "
    "22M/50M/87M); card params are the exact count of the official release's hornet.py "
    "architecture, which rounds to the paper's figures"
)


@register_model(
    ModelCard("hornet", _PAPER, 2022, "cnn", params_m=22.41, gmacs=4.0, top1=82.8, source=_SRC)
)
def hornet_tiny_7x7(**kwargs: Any) -> HorNet:
    return build_model(HorNet, dict(depths=(2, 3, 18, 2), base_dim=64), kwargs)


@register_model(
    ModelCard("hornet", _PAPER, 2022, "cnn", params_m=49.53, gmacs=8.8, top1=83.8, source=_SRC)
)
def hornet_small_7x7(**kwargs: Any) -> HorNet:
    return build_model(HorNet, dict(depths=(2, 3, 18, 2), base_dim=96), kwargs)


@register_model(
    ModelCard("hornet", _PAPER, 2022, "cnn", params_m=87.26, gmacs=15.6, top1=84.2, source=_SRC)
)
def hornet_base_7x7(**kwargs: Any) -> HorNet:
    return build_model(HorNet, dict(depths=(2, 3, 18, 2), base_dim=128), kwargs)


_SRC_GF = (
    "paper Table 1 (ImageNet-1K, 224px, GF rows: FLOPs, top-1; params rounded to "
    "23M/50M/88M); card params are the exact count of the release's hornet_*_gf "
    "architecture (global-local filters sized 14x8 and 7x4 in stages 3 and 4)"
)
_GF = (False, False, True, True)


@register_model(
    ModelCard("hornet", _PAPER, 2022, "cnn", params_m=22.99, gmacs=3.9, top1=83.0, source=_SRC_GF)
)
def hornet_tiny_gf(**kwargs: Any) -> HorNet:
    return build_model(HorNet, dict(depths=(2, 3, 18, 2), base_dim=64, global_filter=_GF), kwargs)


@register_model(
    ModelCard("hornet", _PAPER, 2022, "cnn", params_m=50.40, gmacs=8.7, top1=84.0, source=_SRC_GF)
)
def hornet_small_gf(**kwargs: Any) -> HorNet:
    return build_model(HorNet, dict(depths=(2, 3, 18, 2), base_dim=96, global_filter=_GF), kwargs)


@register_model(
    ModelCard("hornet", _PAPER, 2022, "cnn", params_m=88.42, gmacs=15.5, top1=84.3, source=_SRC_GF)
)
def hornet_base_gf(**kwargs: Any) -> HorNet:
    return build_model(HorNet, dict(depths=(2, 3, 18, 2), base_dim=128, global_filter=_GF), kwargs)


@register_model(ModelCard("hornet", _PAPER, 2022, "cnn", scale="cpu", img_size=32))
def hornet_pico(**kwargs: Any) -> HorNet:
    """Orders 2-5 at widths 32-256, 2x2/2 stem (16x16 grid), one block per stage (two in stage 3)."""
    return build_model(
        HorNet, dict(depths=(1, 1, 2, 1), base_dim=32, stem_stride=2, img_size=32), kwargs
    )
