"""Continuous-kernel convolutions: CKConv and FlexConv.

*CKConv: Continuous Kernel Convolution For Sequential Data* (Romero et al., ICLR 2022)
does not store a convolution kernel: a small network (the kernel network) maps each
relative position of the kernel grid, scaled to [-1, 1] per dimension, to the kernel's
values for every (output, input) channel pair. The kernel can therefore be sampled at any
size, and its parameter count does not depend on that size. The paper's kernel network is
a SIREN (``SIRENKernel``: ``sin(omega_0 (W x + b))`` layers with Sitzmann et al.'s
initialisation); the CCNN release uses MAGNet (``MAGNetKernel``: a multiplicative filter
network whose filters are anisotropic Gabor functions, from *FlexConv*). The last linear
layer of the kernel network is scaled at initialisation so that the sampled kernel has
the variance of a He-initialised convolution (Chang et al., 2020): by ``1 / sqrt(C_in K)``
where K is the number of kernel positions (``1 / sqrt(K)`` for the separable form).

*FlexConv: Continuous Kernel Convolutions with Differentiable Kernel Sizes* (Romero et
al., ICLR 2022) multiplies the sampled kernel by a Gaussian mask with learnable width
``sigma`` per dimension (and mean ``mu``, fixed at the centre by default):
``mask(p) = exp(-1/2 sum_d (p_d - mu_d)^2 / (sigma_d^2 + 1e-8))``. Its width is a
differentiable kernel size: where the mask falls below a threshold (0.1) the kernel is
cropped (``dynamic_cropping``), so at ``mask_init=0.075`` a 33-wide kernel grid starts as
5x5 and grows as ``sigma`` grows. The MAGNet Gabor centres are initialised within
``1.667 * mask_init`` of the centre, as in the release.

``separable=True`` gives the depthwise-then-pointwise form used by CCNN (a continuous
depthwise kernel per input channel, then a 1x1 channel mixer). Kernels wider than
``fft_threshold`` on every side are applied by FFT (``fft_conv``), as in the release.

Details taken from the official CCNN / FlexConv release (``ckconv/nn``): the position grid
``linspace(-1, 1, k)`` per dimension, the initialisations, the crop rule (a kept window of
``2 * ceil(root / step) - 1`` positions around the centre), the bias of both the depthwise
convolution and the channel mixer. Deviations: the Chang et al. scaling is applied in the
constructor from the initial (cropped) kernel size, where the release does it lazily on
the first forward pass (the same numbers, without the extra state); a kernel of size 1
is sampled at position 0 (the release's ``linspace`` would put it at -1); cropping is
skipped on the ``meta`` device, where values are unknown. Not included: FlexConv's
anti-aliasing regularisation of MAGNet's frequencies (a training loss in the paper) and
the causal 1-D kernels used for sequences (the kernels here are centred).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .fftconv import fft_conv

__all__ = [
    "CKConv",
    "FlexConv",
    "MAGNetKernel",
    "SIRENKernel",
    "gaussian_mask",
    "relative_positions",
]

KERNEL_NETS = ("magnet", "siren")
# omega_0 when none is given: SIREN's usual 30 (Sitzmann et al.); for MAGNet the CCNN_6,380
# CIFAR-10 configuration of the release
DEFAULT_OMEGA_0 = {"siren": 30.0, "magnet": 976.781}


def relative_positions(sizes: Sequence[int]) -> torch.Tensor:
    """Kernel grid positions, shape (D, *sizes): ``linspace(-1, 1, n)`` along each axis."""
    axes = [torch.linspace(-1.0, 1.0, n) if n > 1 else torch.zeros(1) for n in sizes]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0)


def gaussian_mask(positions: torch.Tensor, mean: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """FlexConv's mask at ``positions`` (D, *S): exp(-1/2 sum_d (p_d - mu_d)^2 / sigma_d^2)."""
    shape = (-1,) + (1,) * (positions.ndim - 1)
    z = (positions - mean.reshape(shape)) ** 2 / (sigma.reshape(shape) ** 2 + 1e-8)
    return torch.exp(-0.5 * z.sum(0))


def _sample_gamma(shape: tuple[int, ...], alpha: float, beta: float) -> torch.Tensor:
    conc = torch.full(shape, float(alpha))
    return torch._standard_gamma(conc) / beta


class SIRENKernel(nn.Module):
    """Kernel network of CKConv: SIREN layers ``sin(omega_0 (W x + b))`` and a linear output.

    ``num_layers`` counts every linear layer (the first, ``num_layers - 2`` hidden ones and
    the output). Initialisation: first layer U(-1/D, 1/D), hidden layers
    U(-sqrt(6 / hidden) / omega_0, +...), output He-uniform (linear), biases zero.
    """

    def __init__(
        self,
        data_dim: int,
        out_channels: int,
        hidden: int = 32,
        num_layers: int = 3,
        omega_0: float = 30.0,
    ) -> None:
        super().__init__()
        if num_layers < 2:
            raise ValueError(f"a SIREN kernel needs num_layers >= 2, got {num_layers}")
        self.omega_0 = float(omega_0)
        dims = [data_dim] + [hidden] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.output_linear = nn.Linear(hidden, out_channels)
        for i, lin in enumerate(self.layers):
            bound = 1.0 / data_dim if i == 0 else math.sqrt(6.0 / hidden) / self.omega_0
            nn.init.uniform_(lin.weight, -bound, bound)
            nn.init.zeros_(lin.bias)
        nn.init.kaiming_uniform_(self.output_linear.weight, nonlinearity="linear")
        nn.init.zeros_(self.output_linear.bias)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """(P, D) positions -> (P, out_channels) kernel values."""
        h = positions
        for lin in self.layers:
            h = torch.sin(self.omega_0 * lin(h))
        return self.output_linear(h)


class MAGNetFilter(nn.Module):
    """One anisotropic Gabor filter bank: exp(-1/2 |gamma (x - mu)|^2) sin(W x + b)."""

    def __init__(
        self,
        data_dim: int,
        hidden: int,
        omega_0: float,
        alpha: float,
        beta: float,
        init_spatial_value: float,
    ) -> None:
        super().__init__()
        self.mu = nn.Parameter(torch.empty(hidden, data_dim))
        self.gamma = nn.Parameter(torch.empty(hidden, data_dim))
        self.linear = nn.Linear(data_dim, hidden)
        if not self.mu.is_meta:
            with torch.no_grad():
                self.mu.copy_(init_spatial_value * (2 * torch.rand(hidden, data_dim) - 1))
                self.gamma.copy_(_sample_gamma((hidden, data_dim), alpha, beta))
                # nn.Linear's default U(-1/sqrt(D), 1/sqrt(D)), scaled per frequency
                self.linear.weight.mul_(2 * math.pi * omega_0 * self.gamma)
                self.linear.bias.zero_()

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        diff = positions.unsqueeze(1) - self.mu  # (P, hidden, D)
        window = torch.exp(-0.5 * (self.gamma * diff).square().sum(-1))
        return window * torch.sin(self.linear(positions))


class MAGNetKernel(nn.Module):
    """Multiplicative Anisotropic Gabor Network (FlexConv; the CCNN kernel network).

    ``h_0 = g_0(x)``, ``h_l = g_l(x) * (W_l h_{l-1} + b_l)`` for ``l = 1..num_layers``,
    output ``W_out h_L + b_out``; each ``g_l`` is a ``MAGNetFilter`` whose Gabor scales are
    drawn from Gamma(alpha / (l + 1), beta). Hidden linears: He-uniform (linear), bias 1.
    """

    def __init__(
        self,
        data_dim: int,
        out_channels: int,
        hidden: int = 32,
        num_layers: int = 3,
        omega_0: float = 976.781,
        alpha: float = 6.0,
        beta: float = 1.0,
        init_spatial_value: float = 1.0,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"a MAGNet kernel needs num_layers >= 1, got {num_layers}")
        self.filters = nn.ModuleList(
            MAGNetFilter(data_dim, hidden, omega_0, alpha / (i + 1), beta, init_spatial_value)
            for i in range(num_layers + 1)
        )
        self.linears = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(num_layers))
        self.output_linear = nn.Linear(hidden, out_channels)
        for lin in self.linears:
            nn.init.kaiming_uniform_(lin.weight, nonlinearity="linear")
            nn.init.ones_(lin.bias)
        nn.init.kaiming_uniform_(self.output_linear.weight, nonlinearity="linear")
        nn.init.zeros_(self.output_linear.bias)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """(P, D) positions -> (P, out_channels) kernel values."""
        h = self.filters[0](positions)
        for filt, lin in zip(self.filters[1:], self.linears):
            h = filt(positions) * lin(h)
        return self.output_linear(h)


class CKConv(nn.Module):
    """Continuous kernel convolution (1-D or 2-D), stride 1, 'same' zero padding.

    ``kernel_size`` is the side of the grid the kernel network is sampled on (odd; any
    input size works). ``separable=True``: a continuous depthwise kernel per input
    channel followed by a 1x1 channel mixer (``channel_mixer``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 33,
        data_dim: int = 2,
        separable: bool = False,
        kernel_net: str = "siren",
        kernel_hidden: int = 32,
        kernel_layers: int = 3,
        omega_0: float | None = None,
        bias: bool = True,
        fft_threshold: int | None = 50,
        init_spatial_value: float = 1.0,
    ) -> None:
        super().__init__()
        if data_dim not in (1, 2):
            raise ValueError(f"{type(self).__name__} supports data_dim 1 or 2, got {data_dim}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(
                f"kernel_size must be a positive odd number (the kernel is centred), "
                f"got {kernel_size}"
            )
        if kernel_net not in KERNEL_NETS:
            raise ValueError(f"kernel_net must be one of {KERNEL_NETS}, got {kernel_net!r}")
        if in_channels < 1 or out_channels < 1:
            raise ValueError(
                f"channels must be >= 1, got in_channels={in_channels}, out_channels={out_channels}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.data_dim = data_dim
        self.separable = separable
        self.fft_threshold = fft_threshold
        omega = DEFAULT_OMEGA_0[kernel_net] if omega_0 is None else float(omega_0)
        kernel_out = in_channels if separable else in_channels * out_channels
        if kernel_net == "siren":
            self.kernel_net = SIRENKernel(data_dim, kernel_out, kernel_hidden, kernel_layers, omega)
        else:
            self.kernel_net = MAGNetKernel(
                data_dim,
                kernel_out,
                kernel_hidden,
                kernel_layers,
                omega,
                init_spatial_value=init_spatial_value,
            )
        self.register_buffer(
            "positions", relative_positions([kernel_size] * data_dim), persistent=False
        )
        bias_size = in_channels if separable else out_channels
        self.bias = nn.Parameter(torch.zeros(bias_size)) if bias else None
        if separable:
            mixer = nn.Conv1d if data_dim == 1 else nn.Conv2d
            self.channel_mixer = mixer(in_channels, out_channels, 1, bias=bias)
            self._init_channel_mixer()
        # Chang et al. (2020): the sampled kernel gets the variance of a He-initialised one
        fan = self._initial_kernel_points() * (1 if separable else in_channels)
        with torch.no_grad():
            self.kernel_net.output_linear.weight.mul_(math.sqrt(1.0 / fan))

    def _init_channel_mixer(self) -> None:
        nn.init.kaiming_uniform_(self.channel_mixer.weight, nonlinearity="linear")
        if self.channel_mixer.bias is not None:
            nn.init.zeros_(self.channel_mixer.bias)

    def _initial_kernel_points(self) -> int:
        return self.kernel_size**self.data_dim

    # ----- the kernel --------------------------------------------------------------
    def kernel_positions(self) -> torch.Tensor:
        """The (D, *K) grid the kernel is sampled on."""
        return self.positions

    def sample_kernel(self, positions: torch.Tensor) -> torch.Tensor:
        """Kernel network at ``positions`` (D, *K), as a conv weight (C_out, C_in, *K).

        For the separable form the weight is depthwise: (C_in, 1, *K).
        """
        sizes = positions.shape[1:]
        values = self.kernel_net(positions.reshape(self.data_dim, -1).t())  # (P, C)
        values = values.t().reshape(-1, *sizes)
        if self.separable:
            return values.reshape(self.in_channels, 1, *sizes)
        return values.reshape(self.out_channels, self.in_channels, *sizes)

    def kernel(self) -> torch.Tensor:
        """The convolution weight this layer applies now."""
        return self.sample_kernel(self.kernel_positions())

    # ----- forward -----------------------------------------------------------------
    def _convolve(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        groups = self.in_channels if self.separable else 1
        sizes = weight.shape[2:]
        if self.fft_threshold is not None and all(k > self.fft_threshold for k in sizes):
            return fft_conv(x, weight, self.bias, padding="zeros", groups=groups)
        conv = F.conv1d if self.data_dim == 1 else F.conv2d
        return conv(x, weight, self.bias, padding=[k // 2 for k in sizes], groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != self.data_dim + 2 or x.shape[1] != self.in_channels:
            layout = "(B, C, L)" if self.data_dim == 1 else "(B, C, H, W)"
            raise ValueError(
                f"{type(self).__name__} expects {layout} inputs with C={self.in_channels}, "
                f"got shape {tuple(x.shape)}"
            )
        out = self._convolve(x, self.kernel().to(x.dtype))
        return self.channel_mixer(out) if self.separable else out

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"data_dim={self.data_dim}, separable={self.separable}"
        )


class FlexConv(CKConv):
    """CKConv with a learnable Gaussian mask: a differentiable kernel size (FlexConv).

    ``mask_init`` is the initial ``sigma`` (in the [-1, 1] kernel coordinates) of every
    dimension; ``mask_threshold`` the mask value below which the kernel is cropped when
    ``dynamic_cropping`` is on; ``learn_mask_mean`` makes the centre learnable too.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 33,
        data_dim: int = 2,
        separable: bool = False,
        kernel_net: str = "magnet",
        kernel_hidden: int = 32,
        kernel_layers: int = 3,
        omega_0: float | None = None,
        bias: bool = True,
        fft_threshold: int | None = 50,
        mask_init: float = 0.075,
        mask_threshold: float = 0.1,
        dynamic_cropping: bool = True,
        learn_mask_mean: bool = False,
    ) -> None:
        if not mask_init > 0:
            raise ValueError(f"mask_init (the initial Gaussian width) must be > 0, got {mask_init}")
        if not 0 < mask_threshold < 1:
            raise ValueError(f"mask_threshold must lie in (0, 1), got {mask_threshold}")
        self._mask_init = float(mask_init)
        self.mask_threshold = float(mask_threshold)
        self.dynamic_cropping = dynamic_cropping
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            data_dim,
            separable,
            kernel_net,
            kernel_hidden,
            kernel_layers,
            omega_0,
            bias,
            fft_threshold,
            init_spatial_value=1.667 * mask_init,
        )
        self.mask_width = nn.Parameter(torch.full((data_dim,), float(mask_init)))
        mean = torch.zeros(data_dim)
        if learn_mask_mean:
            self.mask_mean = nn.Parameter(mean)
        else:
            self.register_buffer("mask_mean", mean)

    def _init_channel_mixer(self) -> None:
        nn.init.kaiming_normal_(self.channel_mixer.weight)
        if self.channel_mixer.bias is not None:
            nn.init.zeros_(self.channel_mixer.bias)

    def _kept_points(self, root: float) -> int:
        """Positions kept along one axis when the mask falls below threshold at ``root``."""
        k = self.kernel_size
        if not self.dynamic_cropping or k == 1 or abs(root) >= 1.0:
            return k
        index = math.ceil(root / (2.0 / (k - 1)) + 1e-8)
        return 2 * index - 1

    def _initial_kernel_points(self) -> int:
        root = self._mask_init * math.sqrt(-2.0 * math.log(self.mask_threshold))
        return self._kept_points(root) ** self.data_dim

    def mask_roots(self) -> torch.Tensor:
        """Per dimension, the largest |position| at which the mask equals the threshold."""
        aux = self.mask_width.abs() * math.sqrt(-2.0 * math.log(self.mask_threshold))
        return torch.maximum((self.mask_mean - aux).abs(), (self.mask_mean + aux).abs())

    def kernel_positions(self) -> torch.Tensor:
        """The grid cropped to the mask's support (above ``mask_threshold``)."""
        positions = self.positions
        if not self.dynamic_cropping or positions.is_meta or self.kernel_size == 1:
            return positions
        mid = self.kernel_size // 2
        with torch.no_grad():
            roots = self.mask_roots().tolist()
        index = [slice(None)]
        for root in roots:
            kept = self._kept_points(root)
            half = (kept - 1) // 2
            index.append(slice(mid - half, mid + half + 1))
        return positions[tuple(index)]

    def mask(self, positions: torch.Tensor | None = None) -> torch.Tensor:
        """The Gaussian mask on ``positions`` (default: the current cropped grid)."""
        pos = self.kernel_positions() if positions is None else positions
        return gaussian_mask(pos, self.mask_mean, self.mask_width)

    def kernel(self) -> torch.Tensor:
        positions = self.kernel_positions()
        return self.sample_kernel(positions) * self.mask(positions)
