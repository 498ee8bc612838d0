"""ParCNetV2 (*ParCNetV2: Oversized Kernel with Enhanced Attention*, Xu et al., 2022).

A four-stage convolutional network built from one *uniform local-global block*:

- token mixer: a 1x1 convolution doubles the width and splits it into two branches; one
  branch goes through GELU and then through the sum of an **oversized convolution** (global)
  and a 7x7 depthwise convolution (local); the product of the two branches (the
  *bifurcate gate*) is projected back by a 1x1 convolution;
- channel mixer: a **bifurcate gate unit** (BGU), a linear layer to ``mlp_ratio`` x the
  width, split in two halves multiplied together after GELU on one of them, and a linear
  layer back (the gate replaces the plain MLP of a MetaFormer block);
- both are pre-norm residual branches; stages 3 and 4 also scale the residual path by a
  learnable per-channel vector (``res_scale``, initialised to 1) as in the release.

The oversized convolution is a depthwise separable pair of 1-D kernels, ``K x 1`` then
``1 x K``, with ``K = 2 * S - 1`` for a stage whose map is ``S`` wide and zero padding
``K // 2``. Every output position then sees the whole map, and since the kernel is
about twice the map, the effective kernel differs at every position: output row ``i``
weights input row ``j`` by ``w[K // 2 + j - i]``. This is the implicit position encoding
that replaces ParCNetV1's circular padding and explicit position embeddings (the paper
drops both). The kernel sizes follow from ``img_size`` (111, 55, 27 and 13 at 224, the
release's values). With ``kernel_mode="instance"`` the learned kernel is resized at run
time, by linear interpolation with aligned corners, to ``2 * S - 1`` for the actual map
size ``S`` (the release's ``interpolate=True`` path for detection and segmentation), so
the receptive field stays global at any input size; the default ``"fixed"`` keeps the
trained kernel, as the release's classifier does.

Follows the official release (XuRuihan/ParCNetV2, ``models/parcnetv2.py``): stem 7x7
stride-4 convolution followed by a norm, 3x3 stride-2 downsampling preceded by a norm,
bias-free depthwise convolutions and output projections, and its normalization, which
centres the channels and divides them by their L2 norm (not their standard deviation:
LayerNorm up to a factor ``sqrt(C)``) with a scale and no bias. The head pools, applies a
LayerNorm and a linear classifier. Written here because no maintained library provides
ParCNetV2's layers.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import DropPath, drop_path_rates
from ..layers.helpers import init_trunc_normal
from ._base import FeatureInfo, ImageClassifier, check_img_size, min_side_for_convs
from ._registry import ModelCard, build_model, register_model

__all__ = ["BifurcateGateUnit", "OversizedConv2d", "ParCNetV2", "ParCNetV2Norm"]

KERNEL_MODES = ("fixed", "instance")
# stem (7x7, stride 4, padding 2) then three 3x3 stride-2 downsamplings with padding 1
_DOWNSAMPLING = ((7, 4, 2), (3, 2, 1), (3, 2, 1), (3, 2, 1))


def stage_sides(side: int) -> list[int]:
    """The width of each stage's map for an input ``side`` wide."""
    sides = []
    for kernel, stride, padding in _DOWNSAMPLING:
        side = (side + 2 * padding - kernel) // stride + 1
        sides.append(side)
    return sides


class ParCNetV2Norm(nn.Module):
    """The release's channel norm on NCHW maps: ``weight * (x - mean) / max(||x - mean||, eps)``
    over the channels, with no bias."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(dim=1, keepdim=True)
        norm = torch.linalg.vector_norm(centred, dim=1, keepdim=True).clamp_min(self.eps)
        return centred / norm * self.weight.view(1, -1, 1, 1)


class OversizedConv2d(nn.Module):
    """Oversized depthwise convolution: a ``K x 1`` then a ``1 x K`` kernel per channel.

    ``mode="fixed"`` convolves with the learned kernels and zero padding ``K // 2`` (the
    map keeps its size); ``mode="instance"`` first resizes them to ``2 * H - 1`` and
    ``2 * W - 1`` for an ``H x W`` map (linear interpolation, aligned corners) and pads by
    ``H - 1`` and ``W - 1``.
    """

    def __init__(self, dim: int, kernel_size: int, mode: str = "fixed") -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
        if mode not in KERNEL_MODES:
            raise ValueError(f"kernel mode must be one of {KERNEL_MODES}, got {mode!r}")
        self.dim, self.kernel_size, self.mode = dim, kernel_size, mode
        self.conv_h = nn.Conv2d(dim, dim, (kernel_size, 1), groups=dim, bias=False)
        self.conv_w = nn.Conv2d(dim, dim, (1, kernel_size), groups=dim, bias=False)

    def instance_kernels(self, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The kernels resized to ``2 * h - 1`` (vertical) and ``2 * w - 1`` (horizontal)."""
        kh = F.interpolate(
            self.conv_h.weight, size=(2 * h - 1, 1), mode="bilinear", align_corners=True
        )
        kw = F.interpolate(
            self.conv_w.weight, size=(1, 2 * w - 1), mode="bilinear", align_corners=True
        )
        return kh, kw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "instance":
            h, w = x.shape[-2:]
            kh, kw = self.instance_kernels(h, w)
            pad_h, pad_w = h - 1, w - 1
        else:
            kh, kw = self.conv_h.weight, self.conv_w.weight
            pad_h = pad_w = self.kernel_size // 2
        x = F.conv2d(x, kh, padding=(pad_h, 0), groups=self.dim)
        return F.conv2d(x, kw, padding=(0, pad_w), groups=self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, kernel_size={self.kernel_size}, mode={self.mode!r}"


class ParCV2Mixer(nn.Module):
    """The uniform local-global token mixer: ``pw2(a * (OC(g) + DW7(g)))`` with
    ``a, b = split(pw1(x))`` and ``g = GELU(b)``."""

    def __init__(self, dim: int, kernel_size: int, kernel_mode: str) -> None:
        super().__init__()
        self.pwconv1 = nn.Conv2d(dim, 2 * dim, 1)
        self.act = nn.GELU()
        self.global_conv = OversizedConv2d(dim, kernel_size, kernel_mode)
        self.local_conv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim, bias=False)
        self.pwconv2 = nn.Conv2d(dim, dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.pwconv1(x).chunk(2, dim=1)
        gate = self.act(gate)
        return self.pwconv2(value * (self.global_conv(gate) + self.local_conv(gate)))


class BifurcateGateUnit(nn.Module):
    """Bifurcate gate unit on NCHW maps: ``fc2(a * GELU(b))`` with ``a, b = split(fc1(x))``.

    ``fc1`` maps to ``mlp_ratio * dim`` channels (with a bias), ``fc2`` maps half of them
    back (without one), as in the release; 1x1 convolutions act as the linear layers.
    """

    def __init__(self, dim: int, mlp_ratio: float, drop: float = 0.0) -> None:
        super().__init__()
        half = int(mlp_ratio * dim) // 2
        if half < 1:
            raise ValueError(f"mlp_ratio * dim must be at least 2, got {mlp_ratio} * {dim}")
        self.fc1 = nn.Conv2d(dim, 2 * half, 1)
        self.act = nn.GELU()
        self.drop = nn.Dropout(drop)
        self.fc2 = nn.Conv2d(half, dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.fc1(x).chunk(2, dim=1)
        return self.drop(self.fc2(self.drop(value * self.act(gate))))


class ResidualScale(nn.Module):
    """A learnable per-channel scale of the residual path (NCHW)."""

    def __init__(self, dim: int, init_value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.view(1, -1, 1, 1)


class ParCNetV2Block(nn.Module):
    """``x = r1(x) + mixer(norm1(x))``; ``x = r2(x) + BGU(norm2(x))``."""

    def __init__(
        self,
        dim: int,
        kernel_size: int,
        kernel_mode: str,
        mlp_ratio: float,
        res_scale: bool,
        drop: float,
        drop_path: float,
    ) -> None:
        super().__init__()
        self.norm1 = ParCNetV2Norm(dim)
        self.mixer = ParCV2Mixer(dim, kernel_size, kernel_mode)
        self.norm2 = ParCNetV2Norm(dim)
        self.mlp = BifurcateGateUnit(dim, mlp_ratio, drop)
        self.res_scale1 = ResidualScale(dim) if res_scale else nn.Identity()
        self.res_scale2 = ResidualScale(dim) if res_scale else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.res_scale1(x) + self.drop_path(self.mixer(self.norm1(x)))
        return self.res_scale2(x) + self.drop_path(self.mlp(self.norm2(x)))


class Downsample(nn.Module):
    """Stem (convolution, then norm) or stage transition (norm, then convolution)."""

    def __init__(
        self, cin: int, cout: int, kernel: int, stride: int, padding: int, stem: bool
    ) -> None:
        super().__init__()
        self.pre_norm = nn.Identity() if stem else ParCNetV2Norm(cin)
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding)
        self.post_norm = ParCNetV2Norm(cout) if stem else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.post_norm(self.conv(self.pre_norm(x)))


class ParCNetV2(ImageClassifier):
    """ParCNetV2: oversized convolutions and bifurcate gates in a four-stage CNN."""

    width_args = ("dims",)
    depth_args = ("depths",)

    def __init__(
        self,
        depths: tuple[int, ...] = (3, 3, 12, 3),
        dims: tuple[int, ...] = (64, 128, 320, 512),
        mlp_ratio: float = 5.0,
        res_scale_stages: tuple[bool, ...] = (False, False, True, True),
        kernel_sizes: tuple[int, ...] | None = None,
        kernel_mode: str = "fixed",
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int | tuple[int, int] = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if len(depths) != 4 or len(dims) != 4 or len(res_scale_stages) != 4:
            raise ValueError(
                "ParCNetV2 has four stages: depths, dims and res_scale_stages need 4 entries, "
                f"got {len(depths)}, {len(dims)} and {len(res_scale_stages)}"
            )
        if kernel_mode not in KERNEL_MODES:
            raise ValueError(f"kernel_mode must be one of {KERNEL_MODES}, got {kernel_mode!r}")
        self.min_input_size = min_side_for_convs(_DOWNSAMPLING)
        size = check_img_size(img_size, 1, "ParCNetV2", self.min_input_size)
        if kernel_sizes is None:
            # twice the map the stage sees at img_size (the longer side), minus one
            kernel_sizes = tuple(2 * s - 1 for s in stage_sides(max(size)))
        if len(kernel_sizes) != 4 or any(k < 1 or k % 2 == 0 for k in kernel_sizes):
            raise ValueError(
                f"kernel_sizes must be 4 positive odd numbers (one per stage), got {kernel_sizes}"
            )
        self.num_classes, self.in_chans = num_classes, in_chans
        self.kernel_sizes = tuple(kernel_sizes)
        dpr = drop_path_rates(drop_path_rate, depths)
        stages, cin, stride = [], in_chans, 1
        self.feature_info = []
        for i, (kernel, s, padding) in enumerate(_DOWNSAMPLING):
            stride *= s
            blocks = [
                ParCNetV2Block(
                    dims[i],
                    kernel_sizes[i],
                    kernel_mode,
                    mlp_ratio,
                    res_scale_stages[i],
                    drop_rate,
                    dpr[i][j],
                )
                for j in range(depths[i])
            ]
            stages.append(
                nn.Sequential(Downsample(cin, dims[i], kernel, s, padding, i == 0), *blocks)
            )
            self.feature_info.append(FeatureInfo(dims[i], stride, f"stages.{i}"))
            cin = dims[i]
        self.stages = nn.Sequential(*stages)
        self.num_features = dims[-1]
        self.cam_target = "stages.3"
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dims[-1], num_classes) if num_classes else nn.Identity()
        self.apply(init_trunc_normal)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.norm(x.mean(dim=(2, 3))))
        return x if pre_logits else self.head(x)

    def no_weight_decay(self) -> set[str]:
        return {n for n, _ in self.named_parameters() if n.startswith("norm.")}


_PAPER = "ParCNetV2: Oversized Kernel with Enhanced Attention"
# The release's results table gives parameters rounded to 7.4, 25, 39 and 56 M; the cards
# carry the exact counts of the official model definitions (which round to those
# figures), since the rounding alone puts small and base 1.1% and 0.7% away from them.
_SRC = (
    "XuRuihan/ParCNetV2 README results table (ImageNet-1K 224: MACs, top-1; params "
    "7.4/25/39/56M rounded); exact params of the release's models/parcnetv2.py"
)


def _parcnetv2(defaults: dict[str, Any], kwargs: dict[str, Any]) -> ParCNetV2:
    return build_model(ParCNetV2, defaults, kwargs)


@register_model(
    ModelCard("parcnetv2", _PAPER, 2022, "cnn", params_m=7.428, gmacs=1.6, top1=79.4, source=_SRC)
)
def parcnetv2_xt(**kwargs: Any) -> ParCNetV2:
    return _parcnetv2(dict(depths=(3, 3, 9, 2), dims=(48, 96, 192, 320)), kwargs)


@register_model(
    ModelCard("parcnetv2", _PAPER, 2022, "cnn", params_m=24.935, gmacs=4.3, top1=83.5, source=_SRC)
)
def parcnetv2_tiny(**kwargs: Any) -> ParCNetV2:
    return _parcnetv2({}, kwargs)


@register_model(
    ModelCard("parcnetv2", _PAPER, 2022, "cnn", params_m=39.437, gmacs=7.8, top1=84.3, source=_SRC)
)
def parcnetv2_small(**kwargs: Any) -> ParCNetV2:
    return _parcnetv2(dict(depths=(3, 9, 24, 3)), kwargs)


@register_model(
    ModelCard("parcnetv2", _PAPER, 2022, "cnn", params_m=56.368, gmacs=12.5, top1=84.6, source=_SRC)
)
def parcnetv2_base(**kwargs: Any) -> ParCNetV2:
    return _parcnetv2(dict(depths=(3, 9, 24, 3), dims=(96, 192, 384, 576)), kwargs)


@register_model(
    ModelCard(
        "parcnetv2",
        _PAPER,
        2022,
        "cnn",
        scale="cpu",
        img_size=32,
        notes="maps 8/4/2/1 at 32x32, oversized kernels 15/7/3/1",
    )
)
def parcnetv2_pico(**kwargs: Any) -> ParCNetV2:
    return _parcnetv2(dict(depths=(1, 1, 2, 1), dims=(16, 32, 64, 128), img_size=32), kwargs)
