"""Parallel, recurrent and chunkwise retention give the same outputs and gradients."""

from __future__ import annotations

import math

import pytest
import torch

from archbench.layers.retention import MultiScaleRetention, retention_decays


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 64])
def test_three_forms_agree(chunk_size):
    torch.manual_seed(0)
    m = MultiScaleRetention(24, 3, chunk_size=chunk_size, value_factor=2).double()
    x = torch.randn(2, 19, 24, dtype=torch.float64, requires_grad=True)
    outs, grads = [], []
    for mode in ("parallel", "recurrent", "chunkwise"):
        y = m(x, mode)
        (g,) = torch.autograd.grad((y * torch.linspace(-1, 1, 24, dtype=y.dtype)).sum(), x)
        outs.append(y)
        grads.append(g)
    for y, g in zip(outs[1:], grads[1:]):
        torch.testing.assert_close(y, outs[0], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(g, grads[0], rtol=1e-10, atol=1e-10)


def test_retention_is_causal_and_decays_per_head():
    assert math.isclose(retention_decays(3).exp()[2].item(), 1 - 2**-7)
    m = MultiScaleRetention(16, 2).double()
    x = torch.randn(1, 10, 16, dtype=torch.float64)
    y = m(x)
    x2 = x.clone()
    x2[:, 6:] = 0
    torch.testing.assert_close(m(x2)[:, :6], y[:, :6])
    mask = m._decay_mask(4, x.device, torch.float64)
    assert mask[0, 3, 1].item() == pytest.approx((1 - 2**-5) ** 2)
    assert mask[1, 1, 3].item() == 0.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="heads"):
        MultiScaleRetention(10, 3)
    with pytest.raises(ValueError, match="mode"):
        MultiScaleRetention(16, 2, mode="fast")
