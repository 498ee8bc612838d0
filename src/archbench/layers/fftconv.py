"""Convolution computed with the fast Fourier transform, for large and global kernels.

*Scaling Up Computer Vision Neural Networks Using Fast Fourier Transform* (Agrawal, 2023)
replaces the spatial convolutions of large-kernel networks (RepLKNet's 31x31 kernels) by
their Fourier-domain equivalent: the input is zero-padded so that the circular
convolution the FFT computes equals the linear one, the kernel is padded to the same
size, both are transformed with ``rfftn``, the kernel's spectrum is conjugated (deep
learning "convolutions" are cross-correlations), the spectra are multiplied and summed
over input channels, and ``irfftn`` brings the result back. The cost is
O(N log N) in the map size whatever the kernel size, so a kernel as large as the map (a
global convolution) costs the same as a 3x3 one.

``fft_conv`` is that computation for 1-D, 2-D and 3-D inputs, with zero ("same") or
circular padding and grouped / depthwise channels; it equals ``F.conv{1,2,3}d`` with
``padding=k // 2`` (or with a circularly padded input). ``FFTConv2d`` is a drop-in
``nn.Conv2d`` that computes its forward pass this way (registered as
``conv_layer="fftconv"``); a stride is applied by subsampling the stride-1 output.

torch has no FFT convolution of its own (``F.conv*d`` are direct or Winograd/GEMM
algorithms), and the package that provides one (``fft-conv-pytorch``) has no circular
mode and is not maintained, so it is written here on ``torch.fft``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .conv_variants import CONV_LAYERS

__all__ = ["FFTConv2d", "fft_conv"]

PADDINGS = ("zeros", "circular")


def _spectral_product(xf: torch.Tensor, wf: torch.Tensor, groups: int) -> torch.Tensor:
    """Sum over input channels of x's spectrum times the conjugated kernel spectrum."""
    b, cin = xf.shape[:2]
    cout = wf.shape[0]
    spatial = xf.shape[2:]
    xg = xf.reshape(b, groups, cin // groups, *spatial)
    wg = wf.conj().reshape(groups, cout // groups, cin // groups, *spatial)
    out = torch.einsum("bgi...,goi...->bgo...", xg, wg)
    return out.reshape(b, cout, *spatial)


def fft_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    padding: str = "zeros",
    groups: int = 1,
) -> torch.Tensor:
    """Stride-1 'same' cross-correlation of ``x`` with ``weight`` computed by FFT.

    ``x``: (B, C_in, *S) with 1 to 3 spatial dims; ``weight``: (C_out, C_in / groups, *K)
    with odd K (the kernel is centred on each output position, as ``F.conv*d`` with
    ``padding=k // 2``). ``padding="zeros"`` treats the map as zero outside its borders;
    ``"circular"`` wraps it around (a kernel side may then not exceed the map side). The
    output has the shape of ``x`` with C_out channels.
    """
    if padding not in PADDINGS:
        raise ValueError(f"fft_conv padding must be one of {PADDINGS}, got {padding!r}")
    dims = x.ndim - 2
    if dims not in (1, 2, 3) or weight.ndim != x.ndim:
        raise ValueError(
            f"fft_conv expects x of shape (B, C, *S) with 1-3 spatial dims and a weight with "
            f"as many dims; got x {tuple(x.shape)} and weight {tuple(weight.shape)}"
        )
    if groups < 1 or x.shape[1] % groups or weight.shape[0] % groups:
        raise ValueError(
            f"groups={groups} must divide the input channels ({x.shape[1]}) and the output "
            f"channels ({weight.shape[0]})"
        )
    if weight.shape[1] * groups != x.shape[1]:
        raise ValueError(
            f"weight {tuple(weight.shape)} expects {weight.shape[1] * groups} input channels "
            f"with groups={groups}, got {x.shape[1]}"
        )
    ksize = tuple(int(k) for k in weight.shape[2:])
    if any(k % 2 == 0 for k in ksize):
        raise ValueError(f"fft_conv needs odd kernel sides (centred kernels), got {ksize}")
    size = tuple(int(s) for s in x.shape[2:])
    half = tuple(k // 2 for k in ksize)
    axes = tuple(range(2, x.ndim))
    if padding == "zeros":
        # pad by k // 2 on each side, then make the FFT length cover the padded map so that
        # no product wraps around: the circular correlation is then the linear one
        pad = [p for h in reversed(half) for p in (h, h)]
        xp = F.pad(x, pad)
        fft_size = tuple(int(s) for s in xp.shape[2:])
        xf = torch.fft.rfftn(xp, s=fft_size, dim=axes)
        wf = torch.fft.rfftn(weight, s=fft_size, dim=axes)
        out = torch.fft.irfftn(_spectral_product(xf, wf, groups), s=fft_size, dim=axes)
        out = out[(slice(None), slice(None), *(slice(0, s) for s in size))]
    else:
        if any(k > s for k, s in zip(ksize, size)):
            raise ValueError(
                f"circular fft_conv needs kernel sides {ksize} no larger than the map {size}"
            )
        xf = torch.fft.rfftn(x, s=size, dim=axes)
        wf = torch.fft.rfftn(weight, s=size, dim=axes)
        out = torch.fft.irfftn(_spectral_product(xf, wf, groups), s=size, dim=axes)
        # the product gives sum_m x[n + m] w[m]; centring the kernel shifts by k // 2
        out = torch.roll(out, shifts=half, dims=axes)
    out = out.to(x.dtype)
    if bias is not None:
        out = out + bias.reshape(1, -1, *([1] * dims))
    return out


class FFTConv2d(nn.Conv2d):
    """``nn.Conv2d`` (odd kernel, 'same' padding) whose forward pass runs in Fourier space.

    Same parameters and initialisation as ``nn.Conv2d``; ``padding`` must be ``k // 2``
    (or ``"same"``), ``padding_mode`` is ``"zeros"`` or ``"circular"``, and a stride is
    applied by subsampling the stride-1 result (the FFT gains nothing from striding).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = "same",
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
    ) -> None:
        ks = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        if any(k % 2 == 0 for k in ks):
            raise ValueError(f"FFTConv2d needs an odd kernel size, got {kernel_size}")
        same = (ks[0] // 2, ks[1] // 2)
        pad = padding if not isinstance(padding, int) else (padding, padding)
        if pad != "same" and tuple(pad) != same:
            raise ValueError(
                f"FFTConv2d computes 'same' convolutions: padding must be 'same' or {same} "
                f"for kernel {ks}, got {padding!r}"
            )
        if dilation not in (1, (1, 1)):
            raise ValueError(f"FFTConv2d does not dilate; dilation must be 1, got {dilation}")
        if padding_mode not in PADDINGS:
            raise ValueError(
                f"FFTConv2d padding_mode must be one of {PADDINGS}, got {padding_mode!r}"
            )
        super().__init__(
            in_channels,
            out_channels,
            ks,
            stride=stride,
            padding=same,
            groups=groups,
            bias=bias,
            padding_mode=padding_mode,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = fft_conv(x, self.weight, self.bias, padding=self.padding_mode, groups=self.groups)
        sh, sw = self.stride
        if sh > 1 or sw > 1:
            out = out[:, :, ::sh, ::sw]
        return out


CONV_LAYERS.setdefault("fftconv", FFTConv2d)
