"""UniRepLKNet: large-kernel ConvNet with dilated reparameterized kernels.

*UniRepLKNet: A Universal Perception Large-Kernel ConvNet for Audio, Video, Point Cloud,
Time-Series and Image Recognition* (Ding et al., CVPR 2024); journal version *Scaling Up
Your Kernels: Large Kernel Design in ConvNets towards Universal Representations*.

A block is depthwise conv -> BN -> SE -> (channels-last) Linear 4x -> GELU -> GRN ->
Linear -> BN -> layer scale, plus the identity. Large-kernel blocks use the Dilated
Reparam Block: a kxk depthwise conv-BN in parallel with small dilated depthwise conv-BN
branches; ``reparameterize()`` folds those into the kxk kernel, then folds every BN, the
GRN bias and the layer scale into the convolution and linear layers around them (the
release's deploy structure).

The release's README counts parameters of the deploy structure (UniRepLKNet-T 31M,
S 56M); archbench builds the train-time structure, so canonical cards carry its count
and ``extra["params_m_deploy"]`` the README's, which the family tests check after fusing.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..layers import DropPath, LayerNorm2d, SqueezeExcite, drop_path_rates
from ..layers.helpers import init_trunc_normal
from ..layers.reparam import dilated_to_dense, fuse_conv_bn, pad_kernel, reparameterize_model
from ._base import FeatureInfo, ImageClassifier
from ._registry import ModelCard, build_model, register_model

__all__ = ["DilatedReparamBlock", "GRN", "UniRepLKNet", "UniRepLKNetBlock"]

# kernel size -> (small kernel sizes, dilation rates) of the parallel dilated branches
DILATED_BRANCHES: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {
    17: ((5, 9, 3, 3, 3), (1, 2, 4, 5, 7)),
    15: ((5, 7, 3, 3, 3), (1, 2, 3, 5, 7)),
    13: ((5, 7, 3, 3, 3), (1, 2, 3, 4, 5)),
    11: ((5, 5, 3, 3, 3), (1, 2, 3, 4, 5)),
    9: ((5, 5, 3, 3), (1, 2, 3, 4)),
    7: ((5, 3, 3), (1, 2, 3)),
    5: ((3, 3), (1, 2)),
}


class DilatedReparamBlock(nn.Module):
    """Depthwise kxk conv-BN plus parallel dilated small-kernel conv-BN branches (UniRepLKNet)."""

    # kernel size -> (branch kernel sizes, dilations); a subclass may give its own table
    branches: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = DILATED_BRANCHES

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        if kernel_size not in self.branches:
            raise ValueError(
                f"{type(self).__name__} kernel_size must be one of {sorted(self.branches)}, "
                f"got {kernel_size}"
            )
        self.channels, self.kernel_size = channels, kernel_size
        self.kernel_sizes, self.dilations = self.branches[kernel_size]
        self.lk_origin = nn.Conv2d(
            channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=False
        )
        self.origin_bn = nn.BatchNorm2d(channels)
        self.dil_convs = nn.ModuleList(
            nn.Conv2d(
                channels,
                channels,
                k,
                padding=r * (k - 1) // 2,
                dilation=r,
                groups=channels,
                bias=False,
            )
            for k, r in zip(self.kernel_sizes, self.dilations)
        )
        self.dil_bns = nn.ModuleList(nn.BatchNorm2d(channels) for _ in self.kernel_sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not hasattr(self, "origin_bn"):
            return self.lk_origin(x)
        out = self.origin_bn(self.lk_origin(x))
        for conv, bn in zip(self.dil_convs, self.dil_bns):
            out = out + bn(conv(x))
        return out

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Merge every dilated branch into one kxk depthwise kernel with bias."""
        if not hasattr(self, "origin_bn"):
            return
        weight, bias = fuse_conv_bn(self.lk_origin.weight, self.origin_bn)
        for conv, bn, r in zip(self.dil_convs, self.dil_bns, self.dilations):
            w, b = fuse_conv_bn(conv.weight, bn)
            weight = weight + pad_kernel(dilated_to_dense(w, r), self.kernel_size)
            bias = bias + b
        k = self.kernel_size
        merged = nn.Conv2d(self.channels, self.channels, k, padding=k // 2, groups=self.channels)
        merged = merged.to(weight)
        merged.weight.copy_(weight)
        merged.bias.copy_(bias)
        self.lk_origin = merged
        del self.origin_bn, self.dil_convs, self.dil_bns


class GRN(nn.Module):
    """Global Response Normalization on channels-last tensors (ConvNeXt V2), as UniRepLKNet uses it."""

    def __init__(self, dim: int, use_bias: bool = True) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(dim))
        self.beta = nn.Parameter(torch.zeros(dim)) if use_bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = torch.linalg.vector_norm(x, ord=2, dim=(1, 2), keepdim=True)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
        out = (self.gamma * nx + 1) * x
        return out + self.beta if self.beta is not None else out


class UniRepLKNetBlock(nn.Module):
    """dwconv (dilated reparam for k >= 7) -> BN -> SE -> Linear-GELU-GRN-Linear -> BN -> scale."""

    def __init__(
        self,
        dim: int,
        kernel_size: int,
        drop_path: float = 0.0,
        layer_scale_init_value: float = 1e-6,
        ffn_factor: int = 4,
    ) -> None:
        super().__init__()
        if kernel_size >= 7:
            self.dwconv: nn.Module = DilatedReparamBlock(dim, kernel_size)
        elif kernel_size in (3, 5):
            self.dwconv = nn.Conv2d(
                dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, bias=False
            )
        else:
            raise ValueError(f"UniRepLKNet kernel_size must be 3, 5 or >= 7, got {kernel_size}")
        self.norm: nn.Module = nn.BatchNorm2d(dim)
        self.se = SqueezeExcite(dim, rd_channels=dim // 4)
        hidden = int(ffn_factor * dim)
        self.pwconv1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.grn = GRN(hidden, use_bias=True)
        self.pwconv2 = nn.Linear(hidden, dim, bias=False)
        self.norm2: nn.Module = nn.BatchNorm2d(dim)
        self.gamma = (
            nn.Parameter(layer_scale_init_value * torch.ones(dim))
            if layer_scale_init_value > 0
            else None
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.se(self.norm(self.dwconv(x)))
        y = self.grn(self.act(self.pwconv1(y.permute(0, 2, 3, 1))))
        y = self.norm2(self.pwconv2(y).permute(0, 3, 1, 2))
        if self.gamma is not None:
            y = y * self.gamma.view(1, -1, 1, 1)
        return x + self.drop_path(y)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold BNs into the convs/linears, the GRN bias and layer scale into ``pwconv2``."""
        if isinstance(self.dwconv, DilatedReparamBlock):
            self.dwconv.reparameterize()
        if isinstance(self.norm, nn.BatchNorm2d):
            conv = (
                self.dwconv.lk_origin
                if isinstance(self.dwconv, DilatedReparamBlock)
                else self.dwconv
            )
            w, b = fuse_conv_bn(conv.weight, self.norm, conv.bias)
            fused = nn.Conv2d(
                conv.in_channels,
                conv.out_channels,
                conv.kernel_size,
                padding=conv.padding,
                groups=conv.groups,
            ).to(w)
            fused.weight.copy_(w)
            fused.bias.copy_(b)
            self.dwconv = fused
            self.norm = nn.Identity()
        if isinstance(self.norm2, nn.BatchNorm2d):
            bn = self.norm2
            lin = self.pwconv2
            scale = bn.weight / (bn.running_var + bn.eps).sqrt()
            bias = bn.bias - bn.running_mean * scale
            in_bias = lin.bias if lin.bias is not None else 0
            if self.grn.beta is not None:
                in_bias = in_bias + lin.weight @ self.grn.beta
                self.grn.beta = None
            bias = bias + in_bias * scale
            weight = lin.weight * scale[:, None]
            if self.gamma is not None:
                weight, bias = weight * self.gamma[:, None], bias * self.gamma
                self.gamma = None
            fused_lin = nn.Linear(lin.in_features, lin.out_features).to(weight)
            fused_lin.weight.copy_(weight)
            fused_lin.bias.copy_(bias)
            self.pwconv2 = fused_lin
            self.norm2 = nn.Identity()


class UniRepLKNet(ImageClassifier):
    """UniRepLKNet: two-conv stem, four stages of blocks, 3x3/2 conv-LN downsampling, LN head.

    ``kernel_sizes`` gives one kernel size per block (3/5: plain depthwise conv; >= 7:
    dilated reparam block). ``stem_stride=4`` is the release's stem; 2 or 1 make the first
    (or both) stem convolutions stride 1 for small inputs.
    """

    # kernel_sizes, when given, lists one kernel per block and must follow depths
    width_args = ("dims",)
    depth_args = ("depths",)

    def __init__(
        self,
        depths: tuple[int, ...] = (3, 3, 18, 3),
        dims: tuple[int, ...] = (80, 160, 320, 640),
        kernel_sizes: tuple[tuple[int, ...], ...] | None = None,
        stem_stride: int = 4,
        layer_scale_init_value: float = 1e-6,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        depths = tuple(depths)
        if len(depths) != len(dims):
            raise ValueError(f"depths {depths} and dims {dims} must have the same length")
        if kernel_sizes is None:
            if depths not in DEFAULT_KERNEL_SIZES:
                raise ValueError(
                    f"no default kernel sizes for depths {depths} (known: "
                    f"{sorted(DEFAULT_KERNEL_SIZES)}); pass kernel_sizes, one per block"
                )
            kernel_sizes = DEFAULT_KERNEL_SIZES[depths]
        if [len(k) for k in kernel_sizes] != list(depths):
            raise ValueError(f"kernel_sizes {kernel_sizes} must give one size per block {depths}")
        if stem_stride not in (1, 2, 4):
            raise ValueError(f"stem_stride must be 1, 2 or 4, got {stem_stride}")
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        s1, s2 = {4: (2, 2), 2: (1, 2), 1: (1, 1)}[stem_stride]
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, dims[0] // 2, 3, s1, 1),
            LayerNorm2d(dims[0] // 2),
            nn.GELU(),
            nn.Conv2d(dims[0] // 2, dims[0], 3, s2, 1),
            LayerNorm2d(dims[0]),
        )
        dprs = drop_path_rates(drop_path_rate, depths)
        reduction = stem_stride
        self.downsample = nn.ModuleList()
        self.stages = nn.ModuleList()
        self.feature_info = []
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            if i > 0:
                self.downsample.append(
                    nn.Sequential(nn.Conv2d(dims[i - 1], dim, 3, 2, 1), LayerNorm2d(dim))
                )
                reduction *= 2
            self.stages.append(
                nn.Sequential(
                    *(
                        UniRepLKNetBlock(
                            dim, kernel_sizes[i][j], dprs[i][j], layer_scale_init_value
                        )
                        for j in range(depth)
                    )
                )
            )
            self.feature_info.append(FeatureInfo(dim, reduction, f"stages.{i}"))
        # padded strided layers map any input size onto the stages: no size constraint
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
        for i, stage in enumerate(self.stages):
            if i > 0:
                x = self.downsample[i - 1](x)
            x = stage(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.norm(x.mean((2, 3))))
        return x if pre_logits else self.head(x)

    def reparameterize(self) -> UniRepLKNet:
        """Convert to the deploy structure in place (eval mode); returns the model."""
        return reparameterize_model(self)


_T_STAGE3 = (13, 3) * 9
_SBLXL_STAGE3 = (13, 3, 3) * 9
DEFAULT_KERNEL_SIZES: dict[tuple[int, ...], tuple[tuple[int, ...], ...]] = {
    (2, 2, 6, 2): ((3, 3), (13, 13), (13,) * 6, (13, 13)),
    (2, 2, 8, 2): ((3, 3), (13, 13), (13,) * 8, (13, 13)),
    (3, 3, 18, 3): ((3, 3, 3), (13, 13, 13), _T_STAGE3, (13, 13, 13)),
    (3, 3, 27, 3): ((3, 3, 3), (13, 13, 13), _SBLXL_STAGE3, (13, 13, 13)),
}

_PAPER = (
    "UniRepLKNet: A Universal Perception Large-Kernel ConvNet for Audio, Video, Point Cloud, "
    "Time-Series and Image Recognition"
)
_SRC = (
    "official AILab-CVC/UniRepLKNet README (ImageNet-1K, 224px: params of the deploy "
    "structure, GFLOPs, top-1); card params are the release's train-time structure"
)


def _card(train: float, deploy: float, gmacs: float, top1: float) -> ModelCard:
    return ModelCard(
        "unireplknet",
        _PAPER,
        2024,
        "cnn",
        params_m=train,
        gmacs=gmacs,
        top1=top1,
        source=_SRC,
        notes=f"card params count the train-time model (dilated branches, BNs, GRN bias, layer "
        f"scale); the release reports the reparameterized model, {deploy}M "
        "(extra['params_m_deploy'])",
        extra={"params_m_deploy": deploy},
    )


@register_model(_card(31.69, 31.0, 4.9, 83.2))
def unireplknet_t(**kwargs: Any) -> UniRepLKNet:
    return build_model(UniRepLKNet, dict(depths=(3, 3, 18, 3), dims=(80, 160, 320, 640)), kwargs)


@register_model(_card(56.46, 56.0, 9.1, 83.9))
def unireplknet_s(**kwargs: Any) -> UniRepLKNet:
    return build_model(UniRepLKNet, dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768)), kwargs)


@register_model(ModelCard("unireplknet", _PAPER, 2024, "cnn", scale="cpu", img_size=32))
def unireplknet_pico(**kwargs: Any) -> UniRepLKNet:
    """Stride-2 stem (16x16 grid), widths 24-192; 7x7 dilated reparam kernels where the grid allows."""
    return build_model(
        UniRepLKNet,
        dict(
            depths=(1, 1, 2, 1),
            dims=(24, 48, 96, 192),
            kernel_sizes=((3,), (7,), (7, 3), (3,)),
            stem_stride=2,
            img_size=32,
        ),
        kwargs,
    )
