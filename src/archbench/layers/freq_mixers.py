"""Frequency-domain token mixers: AFF, DSM and SPAM. NCHW in, NCHW out, any H and W.

- :class:`AdaptiveFrequencyFilter` (*Adaptive Frequency Filters As Efficient Global Token
  Mixers*, Huang et al., 2023): rfft2 of the features, multiplied by an instance-adaptive
  complex mask that a group-wise 1x1 conv -> ReLU -> 1x1 conv network computes from the
  spectrum itself, then irfft2 back. Equivalent to a large dynamic depthwise convolution.
- :class:`DynamicSpectrumMixer` (*Dynamic Spectrum Mixer for Visual Recognition*, Hu et
  al., 2023): an orthonormal 2D DCT, a per-channel spectrum weighting mixed from ``K``
  learned bases by coefficients predicted from the globally pooled input (dynamic
  spectrum weight generation), the inverse DCT, and a 1x1 projection.
- :class:`SpectralPoolingAggregationModulation` (*SPANet*, Yun & Ro, 2023): a context map
  is low-pass filtered in the Fourier domain at several cut-off radii (spectral pooling),
  the filtered maps are aggregated with learned per-channel weights, and the result
  modulates (multiplies) a value branch before a 1x1 projection.

All transforms use ``norm="ortho"`` and ``irfft2(..., s=(H, W))`` so that odd and even
sizes round-trip exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .mixers import register_mixer

__all__ = [
    "AdaptiveFrequencyFilter",
    "DynamicSpectrumMixer",
    "SpectralPoolingAggregationModulation",
    "dct_matrix",
    "lowpass_masks",
]


@register_mixer("aff")
class AdaptiveFrequencyFilter(nn.Module):
    def __init__(self, dim: int, num_groups: int = 8, hidden_ratio: float = 1.0) -> None:
        super().__init__()
        if dim % num_groups:
            raise ValueError(f"dim {dim} must be divisible by num_groups {num_groups}")
        hidden = max(num_groups, int(2 * dim * hidden_ratio) // num_groups * num_groups)
        self.mask_net = nn.Sequential(
            nn.Conv2d(2 * dim, hidden, 1, groups=num_groups),
            nn.ReLU(),
            nn.Conv2d(hidden, 2 * dim, 1, groups=num_groups),
        )
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        spec = torch.fft.rfft2(x.float(), norm="ortho")
        # group g sees the real and imaginary parts of its own channels
        b, c, fh, fw = spec.shape
        g = self.mask_net[0].groups
        parts = torch.stack((spec.real, spec.imag), dim=2).view(b, g, 2 * c // g, fh, fw)
        mask = self.mask_net(parts.reshape(b, 2 * c, fh, fw)).view(b, c, 2, fh, fw)
        spec = spec * torch.complex(mask[:, :, 0], mask[:, :, 1])
        out = torch.fft.irfft2(spec, s=(h, w), norm="ortho").to(x.dtype)
        return out + self.bias.view(1, -1, 1, 1)


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


def lowpass_masks(
    h: int, w: int, radii: tuple[float, ...], device: torch.device | None = None
) -> torch.Tensor:
    """(K, h, w//2+1) 0/1 masks keeping frequencies within ``radius`` (a fraction of Nyquist)."""
    fy = torch.fft.fftfreq(h, device=device).abs().view(-1, 1) * 2  # in [0, 1]
    fx = torch.fft.rfftfreq(w, device=device).view(1, -1) * 2
    dist = torch.sqrt(fy**2 + fx**2)
    return torch.stack([(dist <= r).float() for r in radii])


@register_mixer("spam")
class SpectralPoolingAggregationModulation(nn.Module):
    def __init__(self, dim: int, radii: tuple[float, ...] = (0.125, 0.25, 0.5)) -> None:
        super().__init__()
        if not radii or any(r <= 0 for r in radii):
            raise ValueError(f"radii must be positive fractions of Nyquist, got {radii}")
        self.radii = tuple(radii)
        self.context = nn.Conv2d(dim, dim, 1)
        self.value = nn.Conv2d(dim, dim, 1)
        self.agg_weights = nn.Parameter(torch.full((len(radii), dim), 1.0 / len(radii)))
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ctx = self.context(x)
        spec = torch.fft.rfft2(ctx.float(), norm="ortho")  # (B, C, h, w//2+1)
        masks = lowpass_masks(h, w, self.radii, x.device)  # (K, h, w//2+1)
        # aggregate in the spectrum (filtering is linear), then one inverse transform
        gain = torch.einsum("kc,khw->chw", self.agg_weights.float(), masks)
        pooled = torch.fft.irfft2(spec * gain, s=(h, w), norm="ortho").to(x.dtype)
        return self.proj(self.value(x) * pooled)
