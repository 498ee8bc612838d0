"""SMPConv: the kernel is the weighted sum of linear-interpolation bumps, written out."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from archbench.layers.conv_variants import create_conv
from archbench.layers.smpconv import SMPConv2d


def _kernel_by_hand(layer: SMPConv2d) -> np.ndarray:
    """K[o, i, a, b] = sum_j w[o, i, j] * max(0, 1 - (|y_a - py_j| + |x_b - px_j|) / r_j)."""
    k = layer.kernel_size
    axis = np.linspace(-1.0, 1.0, k)
    pts = layer.points.detach().double().numpy()
    radius = np.clip(layer.radius.detach().double().numpy(), 1e-3, 1.0)
    weights = layer.weights.detach().double().numpy()
    out = np.zeros((weights.shape[0], weights.shape[1], k, k))
    for a in range(k):
        for b in range(k):
            for j in range(pts.shape[0]):
                dist = abs(axis[a] - pts[j, 0]) + abs(axis[b] - pts[j, 1])
                bump = max(0.0, 1.0 - dist / radius[j])
                out[:, :, a, b] += weights[:, :, j] * bump
    return out


def test_kernel_is_the_sum_of_bumps():
    torch.manual_seed(0)
    layer = SMPConv2d(4, 4, kernel_size=9, groups=4, n_points=6)
    with torch.no_grad():  # wider radii and larger weights than the init, so bumps overlap
        layer.radius.copy_(torch.tensor([0.3, 0.5, 0.8, 1.0, 0.25, 0.6]))
        layer.weights.normal_()
    np.testing.assert_allclose(
        layer.kernel().detach().double().numpy(), _kernel_by_hand(layer), rtol=1e-5, atol=1e-6
    )


def test_forward_is_conv2d_with_that_kernel():
    torch.manual_seed(1)
    layer = SMPConv2d(6, 4, kernel_size=7, groups=2, bias=True, n_points=5, stride=2)
    with torch.no_grad():
        layer.weights.normal_()
        layer.radius.fill_(0.6)
    kernel = torch.tensor(_kernel_by_hand(layer), dtype=torch.float32)
    x = torch.randn(2, 6, 15, 12)
    ref = F.conv2d(x, kernel, layer.bias, stride=2, padding=3, groups=2)
    torch.testing.assert_close(layer(x), ref, atol=1e-5, rtol=1e-4)


def test_radius_is_kept_within_its_bounds():
    layer = SMPConv2d(2, 2, kernel_size=5, groups=2, n_points=3)
    with torch.no_grad():
        layer.radius.copy_(torch.tensor([5.0, -1.0, 0.5]))
    np.testing.assert_allclose(
        layer.kernel().detach().double().numpy(), _kernel_by_hand(layer), rtol=1e-5, atol=1e-7
    )


def test_release_initialisation():
    torch.manual_seed(2)
    layer = SMPConv2d(8, 8, kernel_size=31, groups=8)
    assert layer.n_points == 31**2 // 4
    torch.testing.assert_close(layer.radius.detach(), torch.full((240,), 4.0 / 31))
    assert layer.points.abs().max() <= 1.0
    assert 0.15 < layer.points.std() < 0.25
    assert 0.015 < layer.weights.std() < 0.025


def test_points_move_weights_and_radii_learn():
    torch.manual_seed(3)
    layer = SMPConv2d(3, 3, kernel_size=9, groups=3, n_points=8)
    with torch.no_grad():
        layer.radius.fill_(0.5)
    layer(torch.randn(2, 3, 10, 10)).square().sum().backward()
    for p in (layer.points, layer.radius, layer.weights):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_registered_as_a_conv_layer():
    conv = create_conv("smpconv", 4, 4, 5, groups=4)
    assert isinstance(conv, SMPConv2d)
    assert conv(torch.randn(1, 4, 9, 9)).shape == (1, 4, 9, 9)


def test_bad_arguments_fail_clearly():
    with pytest.raises(ValueError, match="odd"):
        SMPConv2d(2, 2, kernel_size=4)
    with pytest.raises(ValueError, match="n_points"):
        SMPConv2d(2, 2, kernel_size=1)
    with pytest.raises(ValueError, match="padding"):
        SMPConv2d(2, 2, kernel_size=5, padding=0)
    with pytest.raises(ValueError, match=r"\(B, 2, H, W\)"):
        SMPConv2d(2, 2, kernel_size=3, n_points=2)(torch.randn(1, 3, 8, 8))
