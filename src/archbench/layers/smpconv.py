"""SMPConv: self-moving point kernels.

*SMPConv: Self-moving Point Representations for Continuous Convolution* (Kim & Park,
CVPR 2023) builds a continuous kernel without a kernel network: N points with learnable
positions ``p_j`` in [-1, 1]^2, learnable radii ``r_j`` and learnable weights ``w_{c,j}``
define, at each kernel grid position x (``linspace(-1, 1, k)`` per axis),

    K_c(x) = sum_j w_{c,j} * max(0, 1 - |x - p_j|_1 / r_j),

a weighted sum of linear-interpolation "bumps" (an L1 ball of radius r_j around each
point). The points move freely during training, so the kernel can put detail where it
needs it at a cost of N points instead of k^2 weights.

As in the official ImageNet release (``smp_imagenet/models/SMPConv.py``): the points and
radii are shared by all filters of the layer, weights are per filter and input channel;
``n_points`` defaults to ``k^2 // 4``; positions start from a normal of std 0.2 truncated to
[-1, 1], radii at ``2 * 2 / k`` (two grid steps), weights from a normal of std 0.02
(truncated at +-2, so in effect untruncated); the radius is kept in [1e-3, 1] (the
release clips it after each optimizer step; here the forward pass clamps it, which
differs only in that a radius at a bound gets no gradient pushing it further out).
Deviations: the release rotates the sampled kernel by 90 degrees (a transpose and a
flip), which only relabels the learnable point coordinates and is left out; the
release's CUDA depthwise kernel is replaced by ``F.conv2d``, and any ``groups`` is
allowed (the release uses SMPConv for depthwise layers only). The 1-D sequence variant
of the paper (points per output channel, weights averaged over overlapping bumps) is not
included.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ckconv import relative_positions
from .conv_variants import CONV_LAYERS

__all__ = ["SMPConv2d", "smp_kernel"]


def smp_kernel(
    grid: torch.Tensor, points: torch.Tensor, radius: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Kernel from self-moving points.

    ``grid``: (2, kh, kw) positions; ``points``: (N, 2); ``radius``: (N,); ``weights``:
    (C_out, C_in, N). Returns (C_out, C_in, kh, kw).
    """
    diff = (grid.unsqueeze(0) - points[:, :, None, None]).abs().sum(1)  # (N, kh, kw)
    bumps = F.relu(1.0 - diff / radius[:, None, None])
    return torch.einsum("oin,nhw->oihw", weights, bumps)


class SMPConv2d(nn.Module):
    """A k x k convolution whose kernel is drawn by ``n_points`` self-moving points."""

    min_radius = 1e-3
    max_radius = 1.0

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int | None = None,
        groups: int = 1,
        bias: bool = False,
        n_points: int | None = None,
    ) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"SMPConv2d needs a positive odd kernel_size, got {kernel_size}")
        if padding is not None and padding != kernel_size // 2:
            raise ValueError(
                f"SMPConv2d pads by kernel_size // 2 ('same'); padding must be "
                f"{kernel_size // 2} or None, got {padding}"
            )
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(
                f"groups={groups} must divide in_channels={in_channels} and "
                f"out_channels={out_channels}"
            )
        n_points = kernel_size**2 // 4 if n_points is None else n_points
        if n_points < 1:
            raise ValueError(
                f"SMPConv2d needs at least one point; n_points={n_points} (kernel_size "
                f"{kernel_size} gives k^2 // 4 = {kernel_size**2 // 4}: pass n_points)"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.groups = groups
        self.n_points = n_points
        self.register_buffer(
            "grid", relative_positions([kernel_size, kernel_size]), persistent=False
        )
        self.points = nn.Parameter(torch.empty(n_points, 2))
        self.radius = nn.Parameter(torch.full((n_points,), 2.0 * 2.0 / kernel_size))
        self.weights = nn.Parameter(torch.empty(out_channels, in_channels // groups, n_points))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.trunc_normal_(self.points, std=0.2, a=-1.0, b=1.0)
        nn.init.trunc_normal_(self.weights, std=0.02, a=-2.0, b=2.0)

    def kernel(self) -> torch.Tensor:
        """The (C_out, C_in / groups, k, k) weight the points draw now."""
        radius = self.radius.clamp(self.min_radius, self.max_radius)
        return smp_kernel(self.grid, self.points, radius, self.weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"SMPConv2d expects (B, {self.in_channels}, H, W) inputs, got {tuple(x.shape)}"
            )
        return F.conv2d(
            x,
            self.kernel().to(x.dtype),
            self.bias,
            stride=self.stride,
            padding=self.kernel_size // 2,
            groups=self.groups,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"n_points={self.n_points}, stride={self.stride}, groups={self.groups}"
        )


CONV_LAYERS.setdefault("smpconv", SMPConv2d)
