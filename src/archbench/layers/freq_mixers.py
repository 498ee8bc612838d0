"""Frequency-domain token mixers: AFF, DSM and SPAM. NCHW in, NCHW out, any H and W.

- :class:`AdaptiveFrequencyFilter` (*Adaptive Frequency Filters As Efficient Global Token
  Mixers*, Huang et al., 2023): rfft2 of the features, multiplied by an instance-adaptive
  complex mask that a group-wise complex MLP computes from the spectrum itself, then
  irfft2 back. Equivalent to a large dynamic depthwise convolution.
- :class:`DynamicSpectrumMixer` (*Dynamic Spectrum Mixer for Visual Recognition*, Hu et
  al., 2023): an orthonormal 2D DCT, a per-channel spectrum weighting mixed from ``K``
  learned bases by coefficients predicted from the globally pooled input (dynamic
  spectrum weight generation), the inverse DCT, and a 1x1 projection.
- :class:`SpectralPoolingAggregationModulation` (*SPANet*, Yun et al., 2023): channel
  chunks of a conv feature map are filtered in the Fourier domain by fixed
  frequency-balancing filters (spectral pooling), aggregated by 1x1 convs into a context,
  and the context modulates (multiplies) the features before a 1x1 projection.

All transforms use ``norm="ortho"`` and ``irfft2(..., s=(H, W))`` so that odd and even
sizes round-trip exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .act import create_act
from .mixers import register_mixer

__all__ = [
    "AdaptiveFrequencyFilter",
    "DynamicSpectrumMixer",
    "SpectralPoolingAggregationModulation",
    "dct_matrix",
    "spectral_pooling_filter",
]


@register_mixer("aff")
class AdaptiveFrequencyFilter(nn.Module):
    """AFF token mixer: ``x + irfft2(M(X) * X)`` with ``X = rfft2(x)``.

    The instance-adaptive mask ``M`` is a two-layer complex MLP applied to the spectrum at
    every frequency, block-diagonal over ``num_groups`` channel groups (complex weights
    stored as real and imaginary parts), with the activation ``act`` on the real and
    imaginary parts after the first layer and a soft-shrink (``sparsity``) on the output,
    as in the official release. The release takes that activation from the model's
    activation setting (ReLU when none is set; AFFNet's is swish), so it is an argument
    here. The identity term is part of the mixer there as well.
    """

    def __init__(
        self,
        dim: int,
        num_groups: int = 8,
        hidden_ratio: int = 1,
        sparsity: float = 0.01,
        act: str = "relu",
    ) -> None:
        super().__init__()
        if dim % num_groups:
            raise ValueError(f"dim {dim} must be divisible by num_groups {num_groups}")
        self.num_groups, self.sparsity = num_groups, sparsity
        self.act_re = create_act(act)
        self.act_im = create_act(act)
        bs = dim // num_groups
        hidden = bs * hidden_ratio
        self.w1 = nn.Parameter(0.02 * torch.randn(2, num_groups, bs, hidden))
        self.b1 = nn.Parameter(0.02 * torch.randn(2, num_groups, hidden))
        self.w2 = nn.Parameter(0.02 * torch.randn(2, num_groups, hidden, bs))
        self.b2 = nn.Parameter(0.02 * torch.randn(2, num_groups, bs))

    @staticmethod
    def _complex_linear(
        re: torch.Tensor, im: torch.Tensor, w: torch.Tensor, b: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(re + i im) @ (w0 + i w1) + (b0 + i b1) per group; tensors (B, G, c, H, W)."""

        def mm(t: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
            return torch.einsum("bgchw,gco->bgohw", t, m)

        out_re = mm(re, w[0]) - mm(im, w[1]) + b[0][None, :, :, None, None]
        out_im = mm(im, w[0]) + mm(re, w[1]) + b[1][None, :, :, None, None]
        return out_re, out_im

    def mask(self, spec: torch.Tensor) -> torch.Tensor:
        """The complex mask for a spectrum of shape (B, C, H, W // 2 + 1)."""
        b, c, fh, fw = spec.shape
        g = spec.view(b, self.num_groups, c // self.num_groups, fh, fw)
        re, im = self._complex_linear(g.real, g.imag, self.w1, self.b1)
        re, im = self._complex_linear(self.act_re(re), self.act_im(im), self.w2, self.b2)
        re = F.softshrink(re, self.sparsity).reshape(b, c, fh, fw)
        im = F.softshrink(im, self.sparsity).reshape(b, c, fh, fw)
        return torch.complex(re, im)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        spec = torch.fft.rfft2(x.float(), norm="ortho")
        out = torch.fft.irfft2(self.mask(spec) * spec, s=(h, w), norm="ortho")
        return x + out.to(x.dtype)


def dct_matrix(n: int, device: torch.device | None = None, dtype=torch.float32) -> torch.Tensor:
    """Orthonormal DCT-II matrix ``M`` (n x n): ``M @ v`` is the DCT of ``v``."""
    k = torch.arange(n, device=device, dtype=torch.float64).view(-1, 1)
    i = torch.arange(n, device=device, dtype=torch.float64).view(1, -1)
    m = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    m[0] = m[0] / math.sqrt(2.0)
    return m.to(dtype)


@register_mixer("dsm")
class DynamicSpectrumMixer(nn.Module):
    def __init__(
        self,
        dim: int,
        input_size: tuple[int, int] | None = None,
        num_bases: int = 4,
        reduction: int = 4,
    ) -> None:
        super().__init__()
        if input_size is None:
            raise ValueError("DynamicSpectrumMixer needs input_size=(H, W) for its spectrum bases")
        self.dim, self.num_bases = dim, num_bases
        self.bases = nn.Parameter(torch.ones(num_bases, *input_size))
        nn.init.trunc_normal_(self.bases, mean=1.0, std=0.02)
        hidden = max(dim // reduction, 8)
        self.router = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim * num_bases)
        )
        self.proj = nn.Conv2d(dim, dim, 1)

    def spectrum_weights(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) weights: per channel, a softmax mix of the K bases."""
        h, w = x.shape[-2:]
        bases = self.bases
        if bases.shape[-2:] != (h, w):  # other resolutions: resample the bases
            bases = F.interpolate(bases[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        coef = self.router(x.mean((2, 3))).view(-1, self.dim, self.num_bases).softmax(-1)
        return torch.einsum("bck,khw->bchw", coef, bases)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        mh, mw = dct_matrix(h, x.device, x.dtype), dct_matrix(w, x.device, x.dtype)
        spec = mh @ x @ mw.t()  # 2D DCT
        spec = spec * self.spectrum_weights(x)
        return self.proj(mh.t() @ spec @ mw)  # inverse 2D DCT


def spectral_pooling_filter(h: int, w: int, radius: float, lamb: float) -> torch.Tensor:
    """SPANet's frequency-balancing filter on a centred (fftshift-ed) h x w spectrum.

    ``lamb`` inside the circle of ``radius`` around DC, ``1 - lamb`` outside it and 1/3 on
    it (distances in frequency-index units, DC at ``(h // 2, w // 2)``).
    """
    rows = torch.arange(h, dtype=torch.float32).view(-1, 1) - h // 2
    cols = torch.arange(w, dtype=torch.float32).view(1, -1) - w // 2
    dist = torch.sqrt(rows**2 + cols**2)
    out = torch.where(dist < radius, lamb, 1.0 - lamb)
    return torch.where(dist == radius, torch.full_like(out, 1.0 / 3.0), out)


@register_mixer("spam")
class SpectralPoolingAggregationModulation(nn.Module):
    """SPAM: separable depthwise conv, per-chunk spectral pooling, aggregation, modulation.

    1x1 conv -> (1 x k then k x 1) depthwise convs -> the channels are split into one
    chunk per ``lambdas`` entry; each chunk is filtered by a fixed frequency-balancing
    filter (weight ``lamb`` below ``radius``, ``1 - lamb`` above) and mapped back to
    ``dim`` channels by its own 1x1 conv; the sum (context) multiplies the conv features
    (modulation) before a 1x1 output conv. With ``input_size`` the filters are stored as
    frozen parameters, as in the official release (they count as parameters); other input
    sizes, or no ``input_size``, compute them from ``radius`` and ``lambdas``.
    """

    def __init__(
        self,
        dim: int,
        input_size: tuple[int, int] | None = None,
        radius: float = 2.0,
        lambdas: tuple[float, ...] = (0.7, 0.8, 0.9),
        kernel_size: int = 7,
    ) -> None:
        super().__init__()
        if not lambdas or len(lambdas) > dim:
            raise ValueError(f"need 1..{dim} lambdas (one channel chunk each), got {lambdas}")
        if radius <= 0 or kernel_size % 2 == 0:
            raise ValueError(f"radius must be > 0 and kernel_size odd; got {radius}, {kernel_size}")
        self.radius, self.lambdas = float(radius), tuple(float(v) for v in lambdas)
        self.proj_in = nn.Conv2d(dim, dim, 1)
        pad = kernel_size // 2
        self.conv = nn.Sequential(
            nn.Conv2d(dim, dim, (1, kernel_size), padding=(0, pad), groups=dim),
            nn.Conv2d(dim, dim, (kernel_size, 1), padding=(pad, 0), groups=dim),
        )
        # channel chunks as torch.chunk makes them (the release's split)
        size = -(-dim // len(lambdas))
        self.chunks = [min(size, dim - i) for i in range(0, dim, size)]
        if len(self.chunks) != len(lambdas):
            raise ValueError(f"dim {dim} does not split into {len(lambdas)} channel chunks")
        self.pws = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in self.chunks)
        self.proj_out = nn.Conv2d(dim, dim, 1)
        self.filters = nn.ParameterList()
        if input_size is not None:
            for lamb in self.lambdas:
                f = spectral_pooling_filter(*input_size, self.radius, lamb).unsqueeze(0)
                self.filters.append(nn.Parameter(f, requires_grad=False))

    def _half_filter(self, k: int, h: int, w: int, device: torch.device) -> torch.Tensor:
        """Filter k on the rfft2 grid (DC at [0, 0], non-negative column frequencies)."""
        if len(self.filters) and self.filters[k].shape[-2:] == (h, w):
            full = self.filters[k][0]
        else:
            full = spectral_pooling_filter(h, w, self.radius, self.lambdas[k]).to(device)
        return torch.fft.ifftshift(full)[:, : w // 2 + 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = self.conv(self.proj_in(x))
        ctx = 0
        for k, chunk in enumerate(x.split(self.chunks, dim=1)):
            spec = torch.fft.rfft2(chunk.float(), norm="ortho")
            spec = spec * self._half_filter(k, h, w, x.device).float()
            pooled = torch.fft.irfft2(spec, s=(h, w), norm="ortho").to(x.dtype)
            ctx = ctx + self.pws[k](pooled)
        return self.proj_out(x * ctx)
