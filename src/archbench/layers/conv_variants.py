"""Convolution, normalization and residual variants that plug into convolutional blocks.

- ``WSConv2d``: weight standardization; ``BatchChannelNorm``: batch-channel normalization
  (*Micro-Batch Training with Batch-Channel Normalization and Weight Standardization*).
- ``IBNorm``: instance + batch normalization on complementary channel halves (*IBN-Net*).
- ``SPDConv``: space-to-depth followed by a non-strided convolution, replacing strided
  convolutions and pooling (*No More Strided Convolutions or Pooling*).
- ``CondConv2d``: a per-example mixture of expert kernels (*CondConv*).
- ``AdaptiveRotatedConv2d``: kernels rotated by predicted angles and combined per example
  (*Adaptive Rotated Convolution*).
- ``LaurelResidual``: learned augmented residual (*LAuReL*).

All work on NCHW tensors. ``create_conv`` / ``create_block_norm`` build them by name.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "CONV_LAYERS",
    "AdaptiveRotatedConv2d",
    "BatchChannelNorm",
    "CondConv2d",
    "IBNorm",
    "LaurelResidual",
    "SPDConv",
    "WSConv2d",
    "create_block_norm",
    "create_conv",
    "space_to_depth",
]


class WSConv2d(nn.Conv2d):
    """Conv2d whose kernel is standardized (zero mean, unit variance per output channel)."""

    def __init__(self, *args, eps: float = 1e-5, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.eps = eps

    def standardized_weight(self) -> torch.Tensor:
        w = self.weight
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        var = w.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
        return (w - mean) / torch.sqrt(var + self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(
            x,
            self.standardized_weight(),
            self.bias,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
        )


class BatchChannelNorm(nn.Module):
    """Batch-channel normalization: batch normalization, then channel (group) normalization.

    The batch step carries the dataset-level statistics that pure channel normalization
    lacks; the group step keeps each sample's channels well conditioned (the paper pairs
    it with weight standardization). The paper estimates batch statistics for micro-
    batches; here the batch step is standard BatchNorm with running statistics.
    """

    def __init__(self, channels: int, groups: int = 32, eps: float = 1e-5) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, eps=eps, affine=False)
        self.gn = nn.GroupNorm(math.gcd(groups, channels), channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gn(self.bn(x))


class IBNorm(nn.Module):
    """IBN-a normalization: InstanceNorm on the first ``ratio`` of channels, BatchNorm on the rest."""

    def __init__(self, channels: int, ratio: float = 0.5) -> None:
        super().__init__()
        self.half = int(channels * ratio)
        if not 0 < self.half < channels:
            raise ValueError(
                f"IBN ratio {ratio} leaves no channels for one of the two norms ({channels} channels)"
            )
        self.inorm = nn.InstanceNorm2d(self.half, affine=True)
        self.bnorm = nn.BatchNorm2d(channels - self.half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.split(x, [self.half, x.shape[1] - self.half], dim=1)
        return torch.cat([self.inorm(a), self.bnorm(b)], dim=1)


def space_to_depth(x: torch.Tensor, scale: int = 2) -> torch.Tensor:
    """(B, C, H, W) -> (B, C*s*s, H/s, W/s), keeping every pixel (no information discarded)."""
    h, w = x.shape[-2:]
    if h % scale or w % scale:
        raise ValueError(f"space_to_depth needs H and W divisible by {scale}, got {(h, w)}")
    return F.pixel_unshuffle(x, scale)


class SPDConv(nn.Module):
    """Space-to-depth by ``scale`` then a non-strided convolution (SPD-Conv)."""

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int = 3,
        scale: int = 2,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.scale = scale
        self.conv = nn.Conv2d(
            in_chans * scale * scale, out_chans, kernel_size, padding=kernel_size // 2, bias=bias
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(space_to_depth(x, self.scale))


class _PerExampleConv(nn.Module):
    """Shared machinery: convolve each example with its own kernel via one grouped conv."""

    def _conv_per_example(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        b, c, h, w = x.shape
        out_c = weight.shape[1]
        y = F.conv2d(
            x.reshape(1, b * c, h, w),
            weight.reshape(b * out_c, *weight.shape[2:]),
            bias.reshape(-1) if bias is not None else None,
            self.stride,
            self.padding,
            self.dilation,
            groups=b * self.groups,
        )
        return y.view(b, out_c, *y.shape[-2:])


class CondConv2d(_PerExampleConv):
    """Conditionally parameterized convolution: kernel = sum_e r_e(x) W_e with
    r(x) = sigmoid(FC(global_pool(x))), one mixture per example (Yang et al., 2019)."""

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = False,
        num_experts: int = 4,
    ) -> None:
        super().__init__()
        if in_chans % groups or out_chans % groups:
            raise ValueError(
                f"CondConv2d: channels ({in_chans}, {out_chans}) must be divisible by groups {groups}"
            )
        self.stride, self.dilation, self.groups = stride, dilation, groups
        self.padding = dilation * (kernel_size - 1) // 2 if padding is None else padding
        self.num_experts = num_experts
        self.routing = nn.Linear(in_chans, num_experts)
        self.weight = nn.Parameter(
            torch.empty(num_experts, out_chans, in_chans // groups, kernel_size, kernel_size)
        )
        self.bias = nn.Parameter(torch.zeros(num_experts, out_chans)) if bias else None
        for e in range(num_experts):
            nn.init.kaiming_uniform_(self.weight[e], a=math.sqrt(5))

    def routing_weights(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.routing(x.mean((2, 3))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.routing_weights(x)  # B x E
        weight = torch.einsum("be,eoikl->boikl", r, self.weight)
        bias = r @ self.bias if self.bias is not None else None
        return self._conv_per_example(x, weight, bias)


def rotate_kernels(weight: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Rotate k x k kernels by angles ``theta`` (radians) with bilinear interpolation.

    weight: (N, O, I, k, k); theta: (B, N). Returns (B, N, O, I, k, k). A zero angle
    returns the kernel unchanged.
    """
    b, n = theta.shape
    _, o, i, kh, kw = weight.shape
    cos, sin = torch.cos(theta), torch.sin(theta)
    zeros = torch.zeros_like(cos)
    affine = torch.stack(
        [torch.stack([cos, -sin, zeros], -1), torch.stack([sin, cos, zeros], -1)], -2
    )
    affine = affine.reshape(b * n, 2, 3)
    grid = F.affine_grid(affine, [b * n, 1, kh, kw], align_corners=True)
    src = (
        weight.reshape(1, n, o * i, kh, kw)
        .expand(b, n, o * i, kh, kw)
        .reshape(b * n, o * i, kh, kw)
    )
    rotated = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return rotated.view(b, n, o, i, kh, kw)


class AdaptiveRotatedConv2d(_PerExampleConv):
    """Adaptive rotated convolution (Pu et al., 2023).

    A routing branch (depthwise 3x3 conv, LayerNorm, ReLU, global pool) predicts, per
    example, ``num_kernels`` rotation angles (pi * tanh) and combination weights
    (sigmoid); each kernel is rotated by its angle and the rotated kernels are summed
    with those weights into one kernel per example.
    """

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = False,
        num_kernels: int = 4,
    ) -> None:
        super().__init__()
        if in_chans % groups or out_chans % groups:
            raise ValueError(
                f"AdaptiveRotatedConv2d: channels must be divisible by groups {groups}"
            )
        self.stride, self.dilation, self.groups = stride, dilation, groups
        self.padding = dilation * (kernel_size - 1) // 2 if padding is None else padding
        self.num_kernels = num_kernels
        self.route_dw = nn.Conv2d(in_chans, in_chans, 3, padding=1, groups=in_chans, bias=False)
        self.route_norm = nn.LayerNorm(in_chans)
        self.to_angle = nn.Linear(in_chans, num_kernels)
        self.to_weight = nn.Linear(in_chans, num_kernels)
        nn.init.zeros_(self.to_angle.weight)  # start unrotated
        nn.init.zeros_(self.to_angle.bias)
        self.weight = nn.Parameter(
            torch.empty(num_kernels, out_chans, in_chans // groups, kernel_size, kernel_size)
        )
        for k in range(num_kernels):
            nn.init.kaiming_uniform_(self.weight[k], a=math.sqrt(5))
        self.bias = nn.Parameter(torch.zeros(out_chans)) if bias else None

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.route_dw(x).mean((2, 3))
        z = F.relu(self.route_norm(z))
        return math.pi * torch.tanh(self.to_angle(z)), torch.sigmoid(self.to_weight(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        theta, lam = self.route(x)
        kernels = rotate_kernels(self.weight, theta)  # B x N x O x I x k x k
        weight = torch.einsum("bn,bnoikl->boikl", lam, kernels)
        bias = self.bias.expand(x.shape[0], -1) if self.bias is not None else None
        return self._conv_per_example(x, weight, bias)


class LaurelResidual(nn.Module):
    """Learned augmented residual (LAuReL): combine block output f(x) with shortcut s.

    ``rw``: alpha * f(x) + beta * s with learnable scalars (initialised to 1);
    ``lr``: f(x) + s + B(A(s)) with a rank-``rank`` channel map (B starts at zero);
    ``rw_lr``: both. At initialisation every mode equals the plain residual f(x) + s.
    """

    def __init__(self, channels: int, mode: str = "rw", rank: int = 16) -> None:
        super().__init__()
        if mode not in ("rw", "lr", "rw_lr"):
            raise ValueError(f"LAuReL mode must be 'rw', 'lr' or 'rw_lr', got {mode!r}")
        self.mode = mode
        if "rw" in mode:
            self.alpha = nn.Parameter(torch.ones(()))
            self.beta = nn.Parameter(torch.ones(()))
        if "lr" in mode:
            rank = max(1, min(rank, channels))
            self.down = nn.Conv2d(channels, rank, 1, bias=False)
            self.up = nn.Conv2d(rank, channels, 1, bias=False)
            nn.init.zeros_(self.up.weight)

    def forward(self, fx: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        s = shortcut
        if "lr" in self.mode:
            s = s + self.up(self.down(s))
        if "rw" in self.mode:
            return self.alpha * fx + self.beta * s
        return fx + s


CONV_LAYERS = {
    "conv": nn.Conv2d,
    "ws": WSConv2d,
    "condconv": CondConv2d,
    "arconv": AdaptiveRotatedConv2d,
}


def create_conv(
    name: str,
    in_chans: int,
    out_chans: int,
    kernel_size: int,
    stride: int = 1,
    groups: int = 1,
    bias: bool = False,
) -> nn.Module:
    """A k x k convolution of the named kind with 'same' padding."""
    if name not in CONV_LAYERS:
        raise ValueError(f"unknown conv layer {name!r}; choose one of {sorted(CONV_LAYERS)}")
    return CONV_LAYERS[name](
        in_chans,
        out_chans,
        kernel_size,
        stride=stride,
        padding=kernel_size // 2,
        groups=groups,
        bias=bias,
    )


def create_block_norm(name: str, channels: int) -> nn.Module:
    """Normalization for convolutional blocks: batchnorm, bcn (batch-channel) or ibn (IBN-a)."""
    if name == "batchnorm":
        return nn.BatchNorm2d(channels)
    if name == "bcn":
        return BatchChannelNorm(channels)
    if name == "ibn":
        return IBNorm(channels)
    raise ValueError(f"unknown block norm {name!r}; choose batchnorm, bcn or ibn")
