"""ParCNetV2: the oversized convolution against an explicit Toeplitz product, instance
kernels against numpy interpolation, the bifurcate gates and the norm against their
formulas, and the canonical parameter counts against the release's layer list."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.linalg import toeplitz
from scipy.signal import correlate2d
from scipy.special import erf

from archbench.models import create_model, get_model_card
from archbench.models.parcnetv2 import (
    BifurcateGateUnit,
    OversizedConv2d,
    ParCNetV2,
    ParCNetV2Norm,
    ParCV2Mixer,
)


def _band(kernel: np.ndarray, side: int) -> np.ndarray:
    """The (side x side) matrix of a zero-padded 1-D convolution with an odd kernel
    centred at len // 2: entry (i, j) is kernel[c + j - i]."""
    c = len(kernel) // 2
    col = np.array([kernel[c - k] if c - k >= 0 else 0.0 for k in range(side)])
    row = np.array([kernel[c + k] if c + k < len(kernel) else 0.0 for k in range(side)])
    return toeplitz(col, row)


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def _random_kernels(conv: OversizedConv2d, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        conv.conv_h.weight.copy_(torch.randn(conv.conv_h.weight.shape, generator=gen))
        conv.conv_w.weight.copy_(torch.randn(conv.conv_w.weight.shape, generator=gen))


@pytest.mark.parametrize("h,w,kernel", [(5, 5, 9), (4, 6, 11)])
def test_oversized_convolution_is_a_product_of_toeplitz_matrices(h, w, kernel):
    conv = OversizedConv2d(3, kernel).double()
    _random_kernels(conv, 0)
    x = torch.randn(2, 3, h, w, dtype=torch.float64)
    out = conv(x).detach().numpy()
    for ch in range(3):
        th = _band(conv.conv_h.weight[ch, 0, :, 0].detach().numpy(), h)
        tw = _band(conv.conv_w.weight[ch, 0, 0, :].detach().numpy(), w)
        for b in range(2):
            expected = th @ x[b, ch].numpy() @ tw.T
            np.testing.assert_allclose(out[b, ch], expected, rtol=1e-10, atol=1e-10)


def test_kernel_twice_the_map_sees_everything_and_is_not_shift_invariant():
    side = 6
    conv = OversizedConv2d(1, 2 * side - 1).double()
    _random_kernels(conv, 1)
    x = torch.randn(1, 1, side, side, dtype=torch.float64, requires_grad=True)
    conv(x)[0, 0, 0, 0].backward()  # a corner output
    assert (x.grad.abs() > 0).all(), "a corner output must depend on every input pixel"
    # the effective kernel differs per position: shifting the input does not shift the output
    y = conv(x).detach()
    shifted = conv(torch.roll(x.detach(), 1, dims=-1))
    assert not torch.allclose(torch.roll(y, 1, dims=-1), shifted)


def test_instance_kernels_are_resized_to_twice_the_map():
    conv = OversizedConv2d(2, 7, mode="instance").double()
    _random_kernels(conv, 2)
    h, w = 5, 3
    x = torch.randn(1, 2, h, w, dtype=torch.float64)
    out = conv(x).detach().numpy()
    for ch in range(2):
        wh = conv.conv_h.weight[ch, 0, :, 0].detach().numpy()
        ww = conv.conv_w.weight[ch, 0, 0, :].detach().numpy()
        # aligned corners: the resized kernel samples the old one at evenly spaced points
        kh = np.interp(np.linspace(0, 6, 2 * h - 1), np.arange(7), wh)
        kw = np.interp(np.linspace(0, 6, 2 * w - 1), np.arange(7), ww)
        expected = _band(kh, h) @ x[0, ch].numpy() @ _band(kw, w).T
        np.testing.assert_allclose(out[0, ch], expected, rtol=1e-10, atol=1e-10)


def test_bifurcate_gate_unit_matches_its_formula():
    torch.manual_seed(0)
    bgu = BifurcateGateUnit(4, mlp_ratio=5).double()
    with torch.no_grad():
        bgu.fc1.bias.normal_()
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    w1 = bgu.fc1.weight[:, :, 0, 0].detach().numpy()  # (20, 4)
    b1 = bgu.fc1.bias.detach().numpy()
    w2 = bgu.fc2.weight[:, :, 0, 0].detach().numpy()  # (4, 10)
    assert w1.shape == (20, 4) and w2.shape == (4, 10) and bgu.fc2.bias is None
    xs = x.permute(0, 2, 3, 1).numpy()  # channels last
    hidden = xs @ w1.T + b1
    expected = (hidden[..., :10] * _gelu(hidden[..., 10:])) @ w2.T
    np.testing.assert_allclose(
        bgu(x).detach().permute(0, 2, 3, 1).numpy(), expected, rtol=1e-10, atol=1e-10
    )


def test_local_global_mixer_matches_its_formula():
    torch.manual_seed(0)
    mixer = ParCV2Mixer(3, kernel_size=9, kernel_mode="fixed").double()
    with torch.no_grad():
        for p in mixer.parameters():
            p.normal_()
    x = torch.randn(1, 3, 5, 5, dtype=torch.float64)
    w1 = mixer.pwconv1.weight[:, :, 0, 0].detach().numpy()
    b1 = mixer.pwconv1.bias.detach().numpy()
    w2 = mixer.pwconv2.weight[:, :, 0, 0].detach().numpy()
    hidden = np.einsum("oc,chw->ohw", w1, x[0].numpy()) + b1[:, None, None]
    value, gate = hidden[:3], _gelu(hidden[3:])
    mixed = np.empty_like(gate)
    for ch in range(3):
        oc = mixer.global_conv
        th = _band(oc.conv_h.weight[ch, 0, :, 0].detach().numpy(), 5)
        tw = _band(oc.conv_w.weight[ch, 0, 0, :].detach().numpy(), 5)
        local = correlate2d(gate[ch], mixer.local_conv.weight[ch, 0].detach().numpy(), "same")
        mixed[ch] = value[ch] * (th @ gate[ch] @ tw.T + local)
    expected = np.einsum("oc,chw->ohw", w2, mixed)
    np.testing.assert_allclose(mixer(x)[0].detach().numpy(), expected, rtol=1e-9, atol=1e-9)


def test_residual_scales_multiply_the_shortcut_in_late_stages():
    model = create_model("parcnetv2_pico").double()
    for stage, scaled in ((1, False), (2, True)):
        block = model.stages[stage][1]
        with torch.no_grad():  # silence both branches: the block is its shortcut
            block.mixer.pwconv2.weight.zero_()
            block.mlp.fc2.weight.zero_()
            if scaled:
                block.res_scale1.scale.fill_(0.5)
                block.res_scale2.scale.fill_(3.0)
        x = torch.randn(1, block.norm1.weight.numel(), 2, 2, dtype=torch.float64)
        torch.testing.assert_close(block(x), x * (1.5 if scaled else 1.0))


def test_norm_divides_the_centred_channels_by_their_l2_norm():
    norm = ParCNetV2Norm(5).double()
    with torch.no_grad():
        norm.weight.copy_(torch.arange(1.0, 6.0))
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    c = x.numpy() - x.numpy().mean(axis=1, keepdims=True)
    expected = c / np.sqrt((c**2).sum(axis=1, keepdims=True)) * np.arange(1.0, 6.0)[:, None, None]
    np.testing.assert_allclose(norm(x).detach().numpy(), expected, rtol=1e-10, atol=1e-12)


def _release_count(depths, dims, kernels, classes=1000, ratio=5):
    """Parameters of the release's ParCNetV2, written out from its layer list."""
    total = 3 * 49 * dims[0] + dims[0] + dims[0]  # stem conv (+bias) and its scale-only norm
    for i in range(1, 4):
        total += dims[i - 1] + 9 * dims[i - 1] * dims[i] + dims[i]  # norm, 3x3 conv + bias
    for i, (depth, d, k) in enumerate(zip(depths, dims, kernels, strict=True)):
        hidden = ratio * d
        block = (
            d  # norm1
            + 2 * d * d
            + 2 * d  # pwconv1 with bias
            + 2 * d * k  # oversized conv, two 1-D kernels, no bias
            + 49 * d  # 7x7 depthwise, no bias
            + d * d  # pwconv2, no bias
            + d  # norm2
            + hidden * d
            + hidden  # BGU fc1 with bias
            + hidden // 2 * d  # BGU fc2, no bias
            + (2 * d if i >= 2 else 0)  # residual scales in stages 3 and 4
        )
        total += depth * block
    return total + 2 * dims[3] + dims[3] * classes + classes  # LayerNorm and linear head


# (variant, depths, dims, the release README's rounded figure in M)
CANONICAL = [
    ("parcnetv2_xt", (3, 3, 9, 2), (48, 96, 192, 320), "7.4"),
    ("parcnetv2_tiny", (3, 3, 12, 3), (64, 128, 320, 512), "25"),
    ("parcnetv2_small", (3, 9, 24, 3), (64, 128, 320, 512), "39"),
    ("parcnetv2_base", (3, 9, 24, 3), (96, 192, 384, 576), "56"),
]


@pytest.mark.parametrize("name,depths,dims,paper", CANONICAL)
def test_canonical_counts_match_the_release_and_round_to_its_table(name, depths, dims, paper):
    with torch.device("meta"):
        model = create_model(name)
    assert model.kernel_sizes == (111, 55, 27, 13)  # the release's global_kernel_sizes at 224
    count = sum(p.numel() for p in model.parameters())
    assert count == _release_count(depths, dims, (111, 55, 27, 13))
    decimals = len(paper.split(".")[1]) if "." in paper else 0
    assert f"{count / 1e6:.{decimals}f}" == paper
    assert abs(count / 1e6 / get_model_card(name).params_m - 1) < 1e-3


def test_pico_runs_on_any_size_in_both_kernel_modes():
    torch.manual_seed(0)
    for mode in ("fixed", "instance"):
        model = create_model("parcnetv2_pico", num_classes=3, kernel_mode=mode).eval()
        assert model(torch.randn(1, 3, 20, 28)).shape == (1, 3)
    assert create_model("parcnetv2_pico").kernel_sizes == (15, 7, 3, 1)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(kernel_mode="circular"), "kernel_mode must be one of"),
        (dict(kernel_sizes=(15, 7, 4, 1)), "positive odd numbers"),
        (dict(depths=(1, 1, 1)), "four stages"),
        (dict(img_size=2), "at least 3"),
    ],
)
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ParCNetV2(**{"dims": (16, 32, 64, 128), "depths": (1, 1, 1, 1), "img_size": 32, **kwargs})
