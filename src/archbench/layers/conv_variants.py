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
    "rotate_kernels",
    "rotation_matrix",
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
    it with weight standardization). As in the official release, the batch step is an
    affine BatchNorm (a scale and shift per channel) and the group step normalizes each
    sample's groups and applies a learnable scale and shift per group (``weight`` and
    ``bias`` of length ``groups``). The paper estimates batch statistics for micro-
    batches; here the batch step is standard BatchNorm with running statistics.
    """

    def __init__(self, channels: int, groups: int = 32, eps: float = 1e-5) -> None:
        super().__init__()
        self.groups = math.gcd(groups, channels)
        self.eps = eps
        self.bn = nn.BatchNorm2d(channels, eps=eps)
        self.weight = nn.Parameter(torch.ones(self.groups))
        self.bias = nn.Parameter(torch.zeros(self.groups))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        y = F.group_norm(self.bn(x), self.groups, eps=self.eps).view(b, self.groups, -1)
        y = y * self.weight[:, None] + self.bias[:, None]
        return y.view_as(x)


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


# The eight outer taps of a 3x3 kernel in clockwise order (row-major indices), which the
# rotation moves along; the centre tap (index 4) stays in place.
_RING = (0, 1, 2, 5, 8, 7, 6, 3)


def rotation_matrix(theta: torch.Tensor) -> torch.Tensor:
    """The ARC interpolation matrix of a 3x3 kernel rotated by ``theta`` (radians).

    ``theta``: any shape ``S``; returns ``S x 9 x 9`` matrices ``M`` such that the rotated
    kernel, flattened row-major, is ``M @ w.flatten()``. Every tap moves along the ring of
    outer taps in the direction of the sign of ``theta`` (clockwise for positive angles in
    row-down image coordinates). With ``c = cos(theta)`` and ``s = |sin(theta)|``, an edge
    tap is bilinearly interpolated from itself ``c(1-s)``, the next ring tap ``cs``, the tap
    after it ``s(1-c)`` and the centre ``(1-c)(1-s)``; a corner tap from itself ``c-s`` and
    the next ring tap ``1-(c-s)``, so corner taps are kept instead of falling outside the
    sampling grid. Each row sums to one: an all-ones kernel keeps its sum. Valid for
    ``|theta| <= pi/4``, the range the routing produces.
    """
    c = torch.cos(theta)
    s = torch.sin(theta).abs()
    step = torch.where(theta >= 0, 1, -1)
    m = theta.new_zeros(*theta.shape, 9, 9)
    m[..., 4, 4] = 1.0
    for k, tap in enumerate(_RING):
        nxt = torch.tensor([_RING[(k + 1) % 8], _RING[(k - 1) % 8]], device=theta.device)
        nxt2 = torch.tensor([_RING[(k + 2) % 8], _RING[(k - 2) % 8]], device=theta.device)
        pick = (step < 0).long()
        one_hot_next = F.one_hot(nxt[pick], 9).to(theta.dtype)
        if k % 2 == 0:  # corner
            m[..., tap, tap] = c - s
            m[..., tap, :] += (1 - (c - s)).unsqueeze(-1) * one_hot_next
        else:  # edge
            one_hot_next2 = F.one_hot(nxt2[pick], 9).to(theta.dtype)
            m[..., tap, tap] = c * (1 - s)
            m[..., tap, 4] = (1 - c) * (1 - s)
            m[..., tap, :] += (c * s).unsqueeze(-1) * one_hot_next
            m[..., tap, :] += (s * (1 - c)).unsqueeze(-1) * one_hot_next2
    return m


def rotate_kernels(weight: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Rotate 3x3 kernels by angles ``theta`` (radians) with ARC's interpolation matrix.

    weight: (N, O, I, 3, 3); theta: (B, N). Returns (B, N, O, I, 3, 3). A zero angle
    returns the kernel unchanged; see ``rotation_matrix``.
    """
    if weight.shape[-2:] != (3, 3):
        raise ValueError(f"rotate_kernels needs 3x3 kernels, got {tuple(weight.shape[-2:])}")
    n, o, i = weight.shape[:3]
    mat = rotation_matrix(theta)  # B x N x 9 x 9
    flat = weight.reshape(n, o * i, 9)
    rotated = torch.einsum("bnpq,nmq->bnmp", mat, flat)
    return rotated.reshape(theta.shape[0], n, o, i, 3, 3)


class AdaptiveRotatedConv2d(_PerExampleConv):
    """Adaptive rotated convolution (Pu et al., *Adaptive Rotated Convolution for Rotated
    Object Detection*, ICCV 2023), following the official release.

    Routing: depthwise 3x3 conv, LayerNorm over channels at every position, ReLU, global
    average pool; then, each behind its own dropout (``dropout``, 0.2 in the release), one
    linear layer gives ``num_kernels`` combination weights (sigmoid) and another, without
    bias, ``num_kernels`` angles ``softsign(.) * max_angle`` (40 degrees in the release).
    Each 3x3 kernel is rotated by its angle (``rotation_matrix``) and the rotated kernels
    are summed with their weights into one kernel per example. The release defines the
    rotation for 3x3 kernels only, so other sizes are refused.
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
        dropout: float = 0.2,
        max_angle: float = 40.0,
    ) -> None:
        super().__init__()
        if in_chans % groups or out_chans % groups:
            raise ValueError(
                f"AdaptiveRotatedConv2d: channels must be divisible by groups {groups}"
            )
        if kernel_size != 3:
            raise ValueError(
                f"AdaptiveRotatedConv2d rotates 3x3 kernels only, got kernel_size={kernel_size}; "
                "use conv_layer='conv' for other sizes"
            )
        if not 0.0 < max_angle <= 45.0:
            raise ValueError(f"max_angle must be in (0, 45] degrees, got {max_angle}")
        self.stride, self.dilation, self.groups = stride, dilation, groups
        self.padding = dilation * (kernel_size - 1) // 2 if padding is None else padding
        self.num_kernels = num_kernels
        self.max_angle = math.radians(max_angle)
        self.route_dw = nn.Conv2d(in_chans, in_chans, 3, padding=1, groups=in_chans, bias=False)
        self.route_norm = nn.LayerNorm(in_chans)
        self.drop_weight = nn.Dropout(dropout)
        self.to_weight = nn.Linear(in_chans, num_kernels)
        self.drop_angle = nn.Dropout(dropout)
        self.to_angle = nn.Linear(in_chans, num_kernels, bias=False)
        for lin in (self.route_dw, self.to_weight, self.to_angle):
            nn.init.trunc_normal_(lin.weight, std=0.02)
        self.weight = nn.Parameter(
            torch.empty(num_kernels, out_chans, in_chans // groups, kernel_size, kernel_size)
        )
        for k in range(num_kernels):
            nn.init.kaiming_normal_(self.weight[k], mode="fan_out", nonlinearity="relu")
        self.bias = nn.Parameter(torch.zeros(out_chans)) if bias else None

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example angles (radians, within +-max_angle) and combination weights."""
        z = self.route_norm(self.route_dw(x).permute(0, 2, 3, 1))  # LayerNorm per position
        z = F.relu(z).mean((1, 2))
        lam = torch.sigmoid(self.to_weight(self.drop_weight(z)))
        theta = F.softsign(self.to_angle(self.drop_angle(z))) * self.max_angle
        return theta, lam

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
