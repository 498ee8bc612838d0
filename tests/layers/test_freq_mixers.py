"""Frequency mixers keep shapes at odd and even sizes and compute what they claim."""

from __future__ import annotations

import pytest
import torch

from archbench.layers import create_mixer
from archbench.layers.freq_mixers import (
    AdaptiveFrequencyFilter,
    SpectralPoolingAggregationModulation,
    dct_matrix,
    lowpass_masks,
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
def test_aff_with_unit_mask_is_identity(size):
    mixer = AdaptiveFrequencyFilter(8, num_groups=4)
    last = mixer.mask_net[2]
    torch.nn.init.zeros_(last.weight)
    with torch.no_grad():  # mask = 1 + 0j for every channel
        last.bias.copy_(torch.tensor([1.0, 0.0]).repeat(8))
    x = torch.randn(2, 8, *size)
    torch.testing.assert_close(mixer(x), x, rtol=1e-5, atol=1e-5)


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


def test_spam_all_pass_aggregation_is_modulation_of_context():
    mixer = SpectralPoolingAggregationModulation(4, radii=(2.0,))  # keeps every frequency
    x = torch.randn(1, 4, 7, 6)
    expected = mixer.proj(mixer.value(x) * mixer.context(x))
    torch.testing.assert_close(mixer(x), expected, rtol=1e-5, atol=1e-5)
    masks = lowpass_masks(8, 8, (0.25, 1.0))
    assert masks[0].sum() < masks[1].sum() and masks[:, 0, 0].tolist() == [1.0, 1.0]
