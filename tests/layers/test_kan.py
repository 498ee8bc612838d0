"""KAN layers: fitting, grid extension, conv == KAN on unfolded patches, regularisers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from archbench.layers.kan import (
    BottleneckKANConv1d,
    BottleneckKANConv2d,
    BottleneckKANConv3d,
    KANConv1d,
    KANConv2d,
    KANConv3d,
    KANLinear,
    kan_regularization,
    unfold_kan_conv2d,
)
from archbench.layers.kan_basis import BASES


def _opts(name: str, groups: int = 2) -> dict:
    return {"num_groups": groups} if name == "rational" else {}


def test_kanlinear_is_sum_of_edge_functions():
    layer = KANLinear(3, 2, basis="bspline", bias=True)
    x = torch.randn(5, 3)
    edges = layer.edge_functions(x)  # (5, out, in)
    torch.testing.assert_close(layer(x), edges.sum(-1) + layer.bias)
    # the base branch is silu(x) * w_b, the spline part sum_k W B_k
    spline = torch.einsum("nik,oik->noi", layer.basis(x), layer.weight)
    torch.testing.assert_close(edges, spline + F.silu(x)[:, None, :] * layer.base_weight)


def test_rational_kanlinear_is_gr_kan_without_base():
    layer = KANLinear(8, 5, basis="rational", num_groups=4, init="identity")
    assert layer.base_weight is None
    x = torch.randn(6, 8)
    torch.testing.assert_close(layer(x), x @ layer.weight[..., 0].T)
    # variance-preserving init: output variance close to input variance
    big = KANLinear(512, 512, basis="rational", num_groups=8, init="gelu")
    z = torch.randn(256, 512)
    assert 0.8 < big(z).var().item() < 1.25


def test_kanlinear_fits_1d_function():
    torch.manual_seed(0)
    layer = KANLinear(1, 1, basis="bspline", grid_size=10, grid_range=(-1, 1))
    x = torch.linspace(-1, 1, 256)[:, None]
    y = torch.sin(math.pi * x) * torch.exp(x) / 2
    opt = torch.optim.Adam(layer.parameters(), lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        loss = F.mse_loss(layer(x), y)
        loss.backward()
        opt.step()
    rmse = F.mse_loss(layer(x), y).sqrt().item()
    assert rmse < 0.02, rmse


def test_grid_extension_keeps_the_function():
    layer = KANLinear(2, 3, basis="bspline", grid_size=4, spline_order=3)
    with torch.no_grad():
        layer.weight.normal_()
    x = torch.rand(300, 2) * 1.9 - 0.95
    before = layer(x)
    layer.extend_grid(12)
    assert layer.basis.grid_size == 12 and layer.weight.shape == (3, 2, 15)
    torch.testing.assert_close(layer(x), before, atol=1e-4, rtol=1e-4)


def test_grid_update_from_samples_moves_knots_and_keeps_function_approximately():
    layer = KANLinear(2, 2, basis="bspline", grid_size=8, grid_range=(-3, 3))
    x = torch.randn(2000, 2) * 0.5
    before = layer(x)
    old_grid = layer.basis.grid.clone()
    layer.update_grid(x, grid_eps=0.02)
    assert not torch.equal(old_grid, layer.basis.grid)
    inner = layer.basis.grid[:, 3:-3]
    assert inner[:, 0].min() >= x.min() - 1e-5 and inner[:, -1].max() <= x.max() + 1e-5
    err = (layer(x) - before).abs().max().item()
    assert err < 0.05 * before.abs().max().item() + 1e-3


def test_grid_update_needs_bspline():
    with pytest.raises(TypeError, match="bspline"):
        KANLinear(2, 2, basis="chebyshev").extend_grid(8)


@pytest.mark.parametrize(
    "stride,padding,dilation,groups,mode",
    [
        (1, 0, 1, 1, "zeros"),
        (2, 1, 1, 1, "zeros"),
        (1, 2, 2, 2, "zeros"),
        (2, 1, 1, 4, "reflect"),
        (3, 1, 2, 1, "circular"),
    ],
)
def test_kanconv2d_equals_kan_on_unfolded_patches(stride, padding, dilation, groups, mode):
    conv = KANConv2d(
        4, 8, 3, stride, padding, dilation, groups, basis="bspline", bias=True, padding_mode=mode
    )
    with torch.no_grad():
        conv.weight.normal_()
    x = torch.randn(2, 4, 11, 10)
    torch.testing.assert_close(conv(x), unfold_kan_conv2d(conv, x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(BASES))
def test_kanconv2d_patch_equivalence_every_basis(name):
    conv = KANConv2d(4, 6, (3, 2), stride=(2, 1), padding=1, groups=2, basis=name, **_opts(name))
    x = torch.randn(1, 4, 7, 7)
    torch.testing.assert_close(conv(x), unfold_kan_conv2d(conv, x), atol=1e-4, rtol=1e-4)


def test_kanconv2d_matches_kanlinear_per_pixel_for_1x1():
    conv = KANConv2d(3, 5, 1, basis="chebyshev")
    lin = KANLinear(3, 5, basis="chebyshev")
    with torch.no_grad():
        lin.weight.copy_(conv.weight[..., 0, 0])
        lin.base_weight.copy_(conv.base_weight[..., 0, 0])
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(conv(x), lin(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))


def test_kanconv1d_and_3d_agree_with_2d():
    c2 = KANConv2d(2, 3, (1, 3), padding=(0, 1), basis="rbf")
    c1 = KANConv1d(2, 3, 3, padding=1, basis="rbf")
    c3 = KANConv3d(2, 3, (1, 1, 3), padding=(0, 0, 1), basis="rbf")
    with torch.no_grad():
        c1.weight.copy_(c2.weight[..., 0, :])
        c1.base_weight.copy_(c2.base_weight[..., 0, :])
        c3.weight.copy_(c2.weight[..., None, :, :])
        c3.base_weight.copy_(c2.base_weight[..., None, :, :])
    x = torch.randn(2, 2, 9)
    ref = c2(x[:, :, None, :])[:, :, 0]
    torch.testing.assert_close(c1(x), ref)
    torch.testing.assert_close(c3(x[:, :, None, None, :])[:, :, 0, 0], ref)


def test_conv_rejects_bad_groups_and_inputs():
    with pytest.raises(ValueError, match="groups"):
        KANConv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="padding_mode"):
        KANConv2d(2, 2, 3, padding_mode="mirror")
    with pytest.raises(ValueError, match="expects"):
        KANConv2d(2, 2, 3)(torch.randn(1, 3, 5, 5))


def test_bottleneck_conv_is_cheaper_and_shaped():
    full = KANConv2d(64, 64, 3, padding=1, basis="gram", degree=3, base_act="silu")
    bott = BottleneckKANConv2d(64, 64, 3, padding=1, basis="gram", degree=3)
    n_full = sum(p.numel() for p in full.parameters())
    n_bott = sum(p.numel() for p in bott.parameters())
    assert bott.inner_channels == 16
    assert n_bott < n_full / 3
    y = bott(torch.randn(2, 64, 8, 8))
    assert y.shape == (2, 64, 8, 8)
    g = BottleneckKANConv2d(32, 64, 3, stride=2, padding=1, groups=2, norm="instance")
    assert g(torch.randn(1, 32, 8, 8)).shape == (1, 64, 4, 4)
    assert BottleneckKANConv1d(8, 8, 3, padding=1)(torch.randn(2, 8, 5)).shape == (2, 8, 5)
    assert BottleneckKANConv3d(8, 8, 3, padding=1)(torch.randn(2, 8, 3, 3, 3)).shape == (
        2,
        8,
        3,
        3,
        3,
    )


def test_kan_regularization_l1_and_entropy():
    layer = KANLinear(3, 2, track_activations=True)
    x = torch.randn(64, 3)
    layer(x)
    a = layer.edge_functions(x).abs().mean(0)
    p = a / a.sum()
    expected = a.sum() - 2.0 * (p * p.log()).sum()
    torch.testing.assert_close(kan_regularization(layer, l1=1.0, entropy=2.0), expected)
    reg = kan_regularization(layer)
    reg.backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    # weight penalty covers convolutions too
    conv = KANConv2d(2, 2, 3)
    torch.testing.assert_close(
        kan_regularization(conv, weight_l1=1.0), conv.full_weight().abs().mean()
    )


def test_adaptive_grid_survives_state_dict_round_trip():
    layer = KANLinear(2, 2, basis="bspline", grid_size=6)
    x = torch.randn(500, 2) * 0.4
    layer.update_grid(x)
    assert not layer.basis.uniform
    fresh = KANLinear(2, 2, basis="bspline", grid_size=6)
    fresh.load_state_dict(layer.state_dict())
    assert not fresh.basis.uniform
    torch.testing.assert_close(fresh(x), layer(x))
