"""FFT convolution (Scaling Up Computer Vision Neural Networks Using FFT) against F.conv*d."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from archbench.layers.conv_variants import create_conv
from archbench.layers.fftconv import FFTConv2d, fft_conv


def _double(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64)


def test_zero_padding_equals_conv2d_same():
    torch.manual_seed(0)
    x, w, b = _double(2, 4, 13, 10), _double(6, 4, 5, 3), _double(6)
    ref = F.conv2d(x, w, b, padding=(2, 1))
    torch.testing.assert_close(fft_conv(x, w, b), ref, atol=1e-10, rtol=1e-10)


def test_global_kernel_larger_than_the_map_equals_conv2d():
    torch.manual_seed(1)
    x, w = _double(1, 3, 12, 9), _double(2, 3, 23, 17)
    ref = F.conv2d(x, w, padding=(11, 8))
    torch.testing.assert_close(fft_conv(x, w), ref, atol=1e-10, rtol=1e-10)


def test_circular_padding_equals_conv2d_on_a_wrapped_input():
    torch.manual_seed(2)
    x, w, b = _double(2, 3, 11, 8), _double(5, 3, 7, 3), _double(5)
    wrapped = F.pad(x, (1, 1, 3, 3), mode="circular")
    ref = F.conv2d(wrapped, w, b)
    torch.testing.assert_close(fft_conv(x, w, b, padding="circular"), ref, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("groups", [2, 4])
def test_grouped_and_depthwise_equal_conv2d(groups):
    torch.manual_seed(3)
    x, w = _double(2, 4, 9, 9), _double(8, 4 // groups, 5, 5)
    ref = F.conv2d(x, w, padding=2, groups=groups)
    torch.testing.assert_close(fft_conv(x, w, groups=groups), ref, atol=1e-10, rtol=1e-10)


def test_one_dimensional_equals_conv1d():
    torch.manual_seed(4)
    x, w = _double(2, 3, 40), _double(5, 3, 9)
    torch.testing.assert_close(fft_conv(x, w), F.conv1d(x, w, padding=4), atol=1e-10, rtol=1e-10)


def test_gradients_equal_those_of_conv2d():
    torch.manual_seed(5)
    x, w = _double(2, 3, 8, 8).requires_grad_(), _double(4, 3, 5, 5).requires_grad_()
    g = _double(2, 4, 8, 8)
    gx, gw = torch.autograd.grad((fft_conv(x, w) * g).sum(), (x, w))
    rx, rw = torch.autograd.grad((F.conv2d(x, w, padding=2) * g).sum(), (x, w))
    torch.testing.assert_close(gx, rx, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(gw, rw, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("stride", [1, 2])
def test_module_is_a_drop_in_conv2d(stride):
    torch.manual_seed(6)
    fft = FFTConv2d(4, 6, 7, stride=stride, padding=3)
    ref = nn.Conv2d(4, 6, 7, stride=stride, padding=3)
    ref.load_state_dict(fft.state_dict())
    x = torch.randn(2, 4, 15, 12)
    torch.testing.assert_close(fft(x), ref(x), atol=1e-5, rtol=1e-4)


def test_module_circular_mode_matches_conv2d_circular():
    torch.manual_seed(7)
    fft = FFTConv2d(3, 3, 5, padding_mode="circular", groups=3)
    ref = nn.Conv2d(3, 3, 5, padding=2, padding_mode="circular", groups=3)
    ref.load_state_dict(fft.state_dict())
    x = torch.randn(1, 3, 10, 10)
    torch.testing.assert_close(fft(x), ref(x), atol=1e-5, rtol=1e-4)


def test_registered_as_a_conv_layer():
    conv = create_conv("fftconv", 4, 8, 3, stride=2)
    assert isinstance(conv, FFTConv2d)
    assert conv(torch.randn(1, 4, 8, 8)).shape == (1, 8, 4, 4)


def test_bad_input_fails_clearly():
    x = torch.randn(1, 4, 8, 8)
    with pytest.raises(ValueError, match="odd kernel"):
        fft_conv(x, torch.randn(2, 4, 4, 4))
    with pytest.raises(ValueError, match="groups=3"):
        fft_conv(x, torch.randn(3, 1, 3, 3), groups=3)
    with pytest.raises(ValueError, match="no larger than the map"):
        fft_conv(x, torch.randn(2, 4, 9, 9), padding="circular")
    with pytest.raises(ValueError, match="padding must be one of"):
        fft_conv(x, torch.randn(2, 4, 3, 3), padding="reflect")
    with pytest.raises(ValueError, match="'same'"):
        FFTConv2d(4, 4, 5, padding=0)
