"""HorNet: g^n Conv follows the recursive gating formula; orders per stage."""

from __future__ import annotations

import pytest
import torch

from archbench.models import create_model
from archbench.models.hornet import GnConv


def test_gnconv_matches_the_recursion():
    torch.manual_seed(0)
    m = GnConv(16, order=3, scale=0.5).eval()
    assert m.dims == [4, 8, 16]
    x = torch.randn(2, 16, 6, 6)
    proj = m.proj_in(x)
    p0, q = proj[:, :4], proj[:, 4:]
    dq = m.dwconv(q) * 0.5
    q0, q1, q2 = dq[:, :4], dq[:, 4:12], dq[:, 12:]
    p1 = p0 * q0
    p2 = m.pws[0](p1) * q1
    p3 = m.pws[1](p2) * q2
    assert torch.allclose(m(x), m.proj_out(p3), atol=1e-6)


def test_gnconv_order_one_is_a_single_gate():
    m = GnConv(8, order=1).eval()
    x = torch.randn(1, 8, 5, 5)
    proj = m.proj_in(x)
    expected = m.proj_out(proj[:, :8] * m.dwconv(proj[:, 8:]))
    assert torch.allclose(m(x), expected, atol=1e-6)


def test_gnconv_rejects_indivisible_width():
    with pytest.raises(ValueError, match="divisible"):
        GnConv(12, order=4)


def test_stage_orders_grow_two_to_five():
    with torch.device("meta"):
        model = create_model("hornet_tiny_7x7")
    orders = [stage[-1].gnconv.order for stage in model.stages]
    assert orders == [2, 3, 4, 5]
    assert abs(model.stages[0][0].gnconv.scale - 1 / 3) < 1e-9


def test_global_local_filter_matches_a_numpy_reference():
    import numpy as np

    from archbench.models.hornet import GlobalLocalFilter

    torch.manual_seed(0)
    f = GlobalLocalFilter(8, (6, 5)).eval()
    with torch.no_grad():
        f.complex_weight.normal_()
        for norm in (f.pre_norm, f.post_norm):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_()
    x = torch.randn(2, 8, 6, 5)

    def ln(t, norm):  # channels-first LayerNorm, written out
        mu = t.mean(1, keepdims=True)
        var = ((t - mu) ** 2).mean(1, keepdims=True)
        w, b = norm.weight.detach().numpy(), norm.bias.detach().numpy()
        return (t - mu) / np.sqrt(var + 1e-6) * w[None, :, None, None] + b[None, :, None, None]

    xn = ln(x.double().numpy(), f.pre_norm)
    local = torch.nn.functional.conv2d(
        torch.from_numpy(xn[:, :4]), f.dw.weight.detach().double(), padding=1, groups=4
    ).numpy()
    cw = f.complex_weight.detach().double().numpy()
    spec = np.fft.rfft2(xn[:, 4:], axes=(2, 3), norm="ortho") * (cw[..., 0] + 1j * cw[..., 1])
    glob = np.fft.irfft2(spec, s=(6, 5), axes=(2, 3), norm="ortho")
    mixed = np.empty_like(xn)
    mixed[:, 0::2], mixed[:, 1::2] = local, glob  # the release interleaves the two halves
    expected = ln(mixed, f.post_norm)
    with torch.no_grad():
        torch.testing.assert_close(f(x).double(), torch.from_numpy(expected), atol=1e-5, rtol=1e-4)
        # another grid resamples the weight instead of failing
        assert f(torch.randn(1, 8, 9, 7)).shape == (1, 8, 9, 7)


def test_gf_variants_swap_the_last_two_stages_dwconv_for_the_filter():
    with torch.device("meta"):
        conv = create_model("hornet_tiny_7x7")
        gf = create_model("hornet_tiny_gf")
    n_conv = sum(p.numel() for p in conv.parameters())
    n_gf = sum(p.numel() for p in gf.parameters())
    # per block of stage i (width C, order n): total = sum(C / 2^k, k < n) channels lose a
    # 7x7 depthwise conv with bias (50 per channel) and gain a 3x3 depthwise conv on half
    # of them, a complex h x w filter on the other half and two affine LayerNorms
    delta = 0
    for dim, order, depth, (h, w) in ((256, 4, 18, (14, 8)), (512, 5, 2, (7, 4))):
        total = sum(dim // 2**k for k in range(order))
        delta += depth * (-50 * total + total // 2 * 9 + total // 2 * h * w * 2 + 4 * total)
    assert n_gf - n_conv == delta
    assert abs(n_gf / 1e6 - 23) < 0.5  # the paper's rounded 23M
    grids = [
        tuple(b.gnconv.dwconv.complex_weight.shape[1:3])
        for s in gf.stages
        for b in s
        if hasattr(b, "gnconv") and hasattr(b.gnconv.dwconv, "complex_weight")
    ]
    assert set(grids[:18]) == {(14, 8)} and set(grids[18:]) == {(7, 4)} and len(grids) == 20
