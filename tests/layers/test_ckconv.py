"""CKConv and FlexConv: kernels from the written-out kernel networks, masks, crops, convs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from archbench.layers.ckconv import CKConv, FlexConv


def _grid(k: int, dims: int = 2) -> np.ndarray:
    """(k^dims, dims) positions, row-major, linspace(-1, 1, k) per axis."""
    axis = np.linspace(-1.0, 1.0, k)
    if dims == 1:
        return axis[:, None]
    ys, xs = np.meshgrid(axis, axis, indexing="ij")
    return np.stack([ys.ravel(), xs.ravel()], axis=1)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _siren_by_hand(layer: CKConv, points: np.ndarray) -> np.ndarray:
    """SIREN: h = sin(omega_0 (W h + b)) for each hidden layer, then a linear output."""
    net = layer.kernel_net
    h = points
    for lin in net.layers:
        h = np.sin(net.omega_0 * (h @ _np(lin.weight).T + _np(lin.bias)))
    return h @ _np(net.output_linear.weight).T + _np(net.output_linear.bias)


def _magnet_by_hand(layer: CKConv, points: np.ndarray) -> np.ndarray:
    """MAGNet: Gabor filters g_l(x) = exp(-|gamma (x - mu)|^2 / 2) sin(W x + b), multiplied."""
    net = layer.kernel_net

    def gabor(f) -> np.ndarray:
        diff = points[:, None, :] - _np(f.mu)[None]
        window = np.exp(-0.5 * ((_np(f.gamma)[None] * diff) ** 2).sum(-1))
        return window * np.sin(points @ _np(f.linear.weight).T + _np(f.linear.bias))

    h = gabor(net.filters[0])
    for f, lin in zip(net.filters[1:], net.linears):
        h = gabor(f) * (h @ _np(lin.weight).T + _np(lin.bias))
    return h @ _np(net.output_linear.weight).T + _np(net.output_linear.bias)


def test_siren_kernel_is_the_mlp_on_the_position_grid():
    torch.manual_seed(0)
    layer = CKConv(3, 4, kernel_size=5, kernel_net="siren", kernel_hidden=8, omega_0=7.0)
    values = _siren_by_hand(layer, _grid(5))  # (25, out * in), channel o * in + i
    expected = values.T.reshape(4, 3, 5, 5)
    np.testing.assert_allclose(_np(layer.kernel()), expected, rtol=1e-5, atol=1e-6)
    x = torch.randn(2, 3, 9, 7)
    ref = F.conv2d(x, torch.tensor(expected, dtype=torch.float32), layer.bias, padding=2)
    torch.testing.assert_close(layer(x), ref, atol=1e-5, rtol=1e-4)


def test_magnet_kernel_is_the_gabor_network_on_the_position_grid():
    torch.manual_seed(1)
    layer = CKConv(2, 3, kernel_size=7, kernel_net="magnet", kernel_hidden=6, omega_0=5.0)
    expected = _magnet_by_hand(layer, _grid(7)).T.reshape(3, 2, 7, 7)
    np.testing.assert_allclose(_np(layer.kernel()), expected, rtol=1e-4, atol=1e-6)


def test_one_dimensional_ckconv_is_conv1d_with_its_kernel():
    torch.manual_seed(2)
    layer = CKConv(2, 3, kernel_size=9, data_dim=1, kernel_net="siren", kernel_hidden=8)
    expected = _siren_by_hand(layer, _grid(9, dims=1)).T.reshape(3, 2, 9)
    x = torch.randn(2, 2, 30)
    ref = F.conv1d(x, torch.tensor(expected, dtype=torch.float32), layer.bias, padding=4)
    torch.testing.assert_close(layer(x), ref, atol=1e-5, rtol=1e-4)


def test_separable_form_is_depthwise_then_pointwise():
    torch.manual_seed(3)
    layer = CKConv(3, 5, kernel_size=5, separable=True, kernel_net="siren", kernel_hidden=8)
    depthwise = torch.tensor(_siren_by_hand(layer, _grid(5)).T.reshape(3, 1, 5, 5)).float()
    x = torch.randn(2, 3, 8, 8)
    mid = F.conv2d(x, depthwise, layer.bias, padding=2, groups=3)
    ref = F.conv2d(mid, layer.channel_mixer.weight, layer.channel_mixer.bias)
    torch.testing.assert_close(layer(x), ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("separable", [False, True])
def test_output_layer_is_scaled_as_chang_et_al(separable):
    """He-uniform output weights (bound sqrt(3 / hidden)) times sqrt(1 / fan)."""
    torch.manual_seed(4)
    layer = CKConv(6, 4, kernel_size=9, separable=separable, kernel_hidden=64)
    fan = 81 * (1 if separable else 6)
    bound = math.sqrt(3.0 / 64) * math.sqrt(1.0 / fan)
    w = layer.kernel_net.output_linear.weight.abs().max().item()
    assert 0.9 * bound < w <= bound


def test_flexconv_mask_is_the_written_gaussian():
    layer = FlexConv(2, 2, kernel_size=11, dynamic_cropping=False, kernel_hidden=4, omega_0=5.0)
    with torch.no_grad():
        layer.mask_width.copy_(torch.tensor([0.3, 0.55]))
        layer.mask_mean.copy_(torch.tensor([0.1, -0.2]))
    pts = _grid(11)
    expected = np.exp(
        -0.5 * ((pts[:, 0] - 0.1) ** 2 / 0.3**2 + (pts[:, 1] + 0.2) ** 2 / 0.55**2)
    ).reshape(11, 11)
    np.testing.assert_allclose(_np(layer.mask()), expected, rtol=1e-5, atol=1e-7)
    # the kernel is the kernel network's output times that mask
    net_kernel = _magnet_by_hand(layer, pts).T.reshape(2, 2, 11, 11)
    np.testing.assert_allclose(_np(layer.kernel()), net_kernel * expected, rtol=1e-4, atol=1e-6)


def test_flexconv_crops_the_kernel_to_the_mask_support():
    torch.manual_seed(5)
    layer = FlexConv(3, 3, kernel_size=33, separable=True, kernel_hidden=4)
    # sigma 0.075, threshold 0.1: the mask reaches 0.1 at 0.075 * sqrt(2 ln 10) = 0.161,
    # i.e. 2.58 grid steps of 1/16 from the centre: 2 * 3 - 1 = 5 positions kept
    assert layer.kernel().shape == (3, 1, 5, 5)
    with torch.no_grad():
        layer.mask_width.copy_(torch.tensor([0.2, 0.6]))
    # 0.2 * 2.146 = 0.429 -> 6.87 steps -> 13 kept; 0.6 * 2.146 >= 1 -> the whole axis
    assert layer.kernel().shape == (3, 1, 13, 33)
    # what is cropped away lies below the threshold, what is kept reaches it
    full = FlexConv(3, 3, kernel_size=33, separable=True, kernel_hidden=4, dynamic_cropping=False)
    full.load_state_dict(layer.state_dict())
    mask = full.mask()
    assert mask[:10].max() < 0.1 and mask[23:].max() < 0.1
    assert mask[10:23, 16].min() > 0.05
    # the cropped kernel is the centre window of the full one, and the layer applies it
    torch.testing.assert_close(layer.kernel(), full.kernel()[:, :, 10:23, :])
    x = torch.randn(1, 3, 20, 20)
    mid = F.conv2d(x, full.kernel()[:, :, 10:23, :], layer.bias, padding=(6, 16), groups=3)
    ref = F.conv2d(mid, layer.channel_mixer.weight, layer.channel_mixer.bias)
    torch.testing.assert_close(layer(x), ref, atol=1e-5, rtol=1e-4)


def test_mask_width_is_learnable():
    torch.manual_seed(6)
    layer = FlexConv(2, 2, kernel_size=15, kernel_hidden=4, mask_init=0.3)
    layer(torch.randn(1, 2, 12, 12)).square().sum().backward()
    assert layer.mask_width.grad is not None and layer.mask_width.grad.abs().sum() > 0


def test_large_kernels_use_the_fft_and_agree_with_the_spatial_conv():
    torch.manual_seed(7)
    layer = FlexConv(2, 2, kernel_size=55, separable=True, kernel_hidden=4, mask_init=1.0)
    assert layer.kernel().shape[-2:] == (55, 55)
    x = torch.randn(1, 2, 30, 30)
    fft_out = layer(x)
    layer.fft_threshold = None
    torch.testing.assert_close(fft_out, layer(x), atol=1e-4, rtol=1e-3)


def test_any_input_size():
    layer = FlexConv(3, 4, kernel_size=33, separable=True, kernel_hidden=4)
    for size in [(5, 7), (32, 32), (41, 19)]:
        assert layer(torch.randn(1, 3, *size)).shape == (1, 4, *size)


def test_bad_arguments_fail_clearly():
    with pytest.raises(ValueError, match="odd"):
        CKConv(2, 2, kernel_size=4)
    with pytest.raises(ValueError, match="kernel_net"):
        CKConv(2, 2, kernel_net="relu_mlp")
    with pytest.raises(ValueError, match="data_dim"):
        CKConv(2, 2, data_dim=3)
    with pytest.raises(ValueError, match="mask_threshold"):
        FlexConv(2, 2, mask_threshold=1.5)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\) inputs with C=2"):
        CKConv(2, 2, kernel_size=3)(torch.randn(1, 3, 8, 8))
