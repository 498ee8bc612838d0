"""Frequency mixers keep shapes at odd and even sizes and compute what they claim."""

from __future__ import annotations

import pytest
import torch

from archbench.layers import create_mixer
from archbench.layers.freq_mixers import (
    AdaptiveFrequencyFilter,
    SpectralPoolingAggregationModulation,
    dct_matrix,
    spectral_pooling_filter,
)


@pytest.mark.parametrize("name", ["aff", "dsm", "spam"])
@pytest.mark.parametrize("size", [(8, 8), (7, 7), (6, 9), (5, 4)])
def test_shapes_at_odd_and_even_sizes(name, size):
    mixer = create_mixer(name, 16, input_size=(8, 8))
    x = torch.randn(2, 16, *size, requires_grad=True)
    y = mixer(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("size", [(7, 7), (6, 9)])
def test_aff_with_unit_mask_doubles_the_input(size):
    mixer = AdaptiveFrequencyFilter(8, num_groups=4, sparsity=0.0)
    with torch.no_grad():  # mask = 1 + 0j everywhere: second layer has zero weights, bias 1
        mixer.w2.zero_()
        mixer.b2.zero_()
        mixer.b2[0] = 1.0
    x = torch.randn(2, 8, *size)
    torch.testing.assert_close(mixer(x), 2 * x, rtol=1e-5, atol=1e-5)


def test_aff_is_global():
    mixer = AdaptiveFrequencyFilter(8, num_groups=2)
    x = torch.zeros(1, 8, 9, 9, requires_grad=True)
    y = mixer(x + torch.randn(1, 8, 9, 9))
    (g,) = torch.autograd.grad(y[0, :, 0, 0].sum(), x)
    assert (g[0].abs().sum(0) > 0).float().mean() > 0.9  # a corner sees the whole map


def test_dct_is_orthonormal_at_odd_sizes():
    for n in (5, 8):
        m = dct_matrix(n, dtype=torch.float64)
        torch.testing.assert_close(m @ m.t(), torch.eye(n, dtype=torch.float64))


def test_spam_filter_values():
    f = spectral_pooling_filter(7, 7, 1.0, 0.7)
    assert f[3, 3].item() == pytest.approx(0.7)  # DC, inside the circle
    assert f[3, 4].item() == pytest.approx(1 / 3)  # on the circle
    assert f[0, 0].item() == pytest.approx(0.3)  # outside


@pytest.mark.parametrize("size", [(7, 7), (8, 8), (6, 9)])
def test_spam_rfft_path_equals_full_fft_with_shift(size):
    h, w = size
    mixer = SpectralPoolingAggregationModulation(6, input_size=(8, 8), radius=2.0)
    x = torch.randn(2, 6, h, w)
    feats = mixer.conv(mixer.proj_in(x))
    ctx = 0
    for k, chunk in enumerate(feats.split(mixer.chunks, dim=1)):
        spec = torch.fft.fftshift(torch.fft.fft2(chunk, norm="ortho"), dim=(-2, -1))
        spec = spec * spectral_pooling_filter(h, w, 2.0, mixer.lambdas[k])
        pooled = torch.fft.ifft2(torch.fft.ifftshift(spec, dim=(-2, -1)), norm="ortho").real
        ctx = ctx + mixer.pws[k](pooled)
    torch.testing.assert_close(mixer(x), mixer.proj_out(feats * ctx), rtol=1e-4, atol=1e-5)
    assert sum(p.numel() for p in mixer.filters) == 3 * 64  # frozen filters at build size
