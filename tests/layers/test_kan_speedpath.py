"""The fast polynomial-basis path against the recurrences written out here (float64).

The polynomial bases compute their features and derivatives in one custom autograd
function; these tests rebuild each family from its textbook three-term recurrence with
plain autograd and compare values and gradients (input and layer weights).
"""

from __future__ import annotations

import math

import pytest
import torch

from archbench.layers.kan import KANLinear
from archbench.layers.kan_basis import create_basis


def _chebyshev(t: torch.Tensor, deg: int, **_: float) -> list[torch.Tensor]:
    out = [torch.ones_like(t), t]
    for _n in range(2, deg + 1):
        out.append(2 * t * out[-1] - out[-2])
    return out[: deg + 1]


def _legendre(t: torch.Tensor, deg: int, **_: float) -> list[torch.Tensor]:
    out = [torch.ones_like(t), t]
    for n in range(1, deg):
        out.append(((2 * n + 1) * t * out[-1] - n * out[-2]) / (n + 1))
    return out[: deg + 1]


def _hermite(t: torch.Tensor, deg: int, **_: float) -> list[torch.Tensor]:
    out = [torch.ones_like(t), t]
    for n in range(1, deg):
        out.append(t * out[-1] - n * out[-2])
    return out[: deg + 1]


def _gram(t: torch.Tensor, deg: int, m: float = 32.0, **_: float) -> list[torch.Tensor]:
    out = [torch.ones_like(t), t]
    for n in range(1, deg):
        beta = n * n * (1 - n * n / (m * m)) / (4 * n * n - 1)
        out.append(t * out[-1] - beta * out[-2])
    return out[: deg + 1]


def _jacobi(t: torch.Tensor, deg: int, a: float = 1.0, b: float = 1.0) -> list[torch.Tensor]:
    # the standard recurrence (e.g. Abramowitz & Stegun 22.7.1)
    out = [torch.ones_like(t), 0.5 * ((a + b + 2) * t + (a - b))]
    for n in range(2, deg + 1):
        c = 2 * n + a + b
        lhs = 2 * n * (n + a + b) * (c - 2)
        rhs = (c - 1) * (a * a - b * b) + (c - 2) * (c - 1) * c * t
        out.append((rhs * out[-1] - 2 * (n + a - 1) * (n + b - 1) * c * out[-2]) / lhs)
    return out[: deg + 1]


CASES = [
    ("chebyshev", {"degree": 3}, _chebyshev, {}, True),
    ("chebyshev", {"degree": 1}, _chebyshev, {}, True),
    ("chebyshev", {"degree": 6, "squash": None}, _chebyshev, {}, False),
    ("legendre", {"degree": 5}, _legendre, {}, True),
    ("hermite", {"degree": 4, "squash": None}, _hermite, {}, False),
    ("hermite", {"degree": 3}, _hermite, {}, True),
    ("gram", {"degree": 4, "num_points": 9}, _gram, {"m": 9.0}, True),
    ("jacobi", {"degree": 5, "alpha": 0.5, "beta": 2.0}, _jacobi, {"a": 0.5, "b": 2.0}, True),
    ("jacobi", {"degree": 3}, _jacobi, {}, True),
]


@pytest.mark.parametrize(("name", "opts", "ref", "ref_opts", "tanh"), CASES)
def test_polynomial_basis_matches_written_out_recurrence(name, opts, ref, ref_opts, tanh):
    torch.manual_seed(0)
    basis = create_basis(name, 6, **opts).double()
    x = (torch.randn(5, 6, dtype=torch.float64) * 1.3).requires_grad_(True)
    feats = basis(x)
    x_ref = x.detach().clone().requires_grad_(True)
    t = torch.tanh(x_ref) if tanh else x_ref
    expect = torch.stack(ref(t, opts["degree"], **ref_opts), dim=-1)
    torch.testing.assert_close(feats, expect, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(feats)
    (gx,) = torch.autograd.grad((feats * g).sum(), x)
    (gx_ref,) = torch.autograd.grad((expect * g).sum(), x_ref)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-11, atol=1e-11)


def test_gram_post_act_and_degree_zero_paths():
    torch.manual_seed(1)
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    gram = create_basis("gram", 3, degree=3, post_act="silu").double()
    x_ref = x.detach().clone().requires_grad_(True)
    expect = torch.nn.functional.silu(torch.stack(_gram(torch.tanh(x_ref), 3), -1))
    feats = gram(x)
    torch.testing.assert_close(feats, expect, rtol=1e-12, atol=1e-12)
    (gx,) = torch.autograd.grad(feats.sum(), x)
    (gx_ref,) = torch.autograd.grad(expect.sum(), x_ref)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-11, atol=1e-11)
    # degree 0: a constant feature, no gradient path to x
    const = create_basis("chebyshev", 3, degree=0).double()(x)
    assert const.shape == (4, 3, 1) and not const.requires_grad
    assert torch.equal(const, torch.ones(4, 3, 1, dtype=torch.float64))


def test_learned_gram_beta_still_gets_gradients():
    torch.manual_seed(2)
    gram = create_basis("gram", 4, degree=3, learn_beta=True).double()
    x = torch.randn(6, 4, dtype=torch.float64)
    gram(x).square().sum().backward()
    assert gram.beta_weights.grad is not None and gram.beta_weights.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["chebyshev", "legendre", "jacobi"])
def test_kan_linear_gradients_match_einsum_reference(name):
    """Whole layer, float64: output and every gradient against the written-out KAN sum."""
    torch.manual_seed(3)
    layer = KANLinear(7, 4, basis=name, bias=True).double()
    x = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    g = torch.randn_like(y)
    grads = torch.autograd.grad((y * g).sum(), [x, layer.weight, layer.base_weight])

    x_ref = x.detach().clone().requires_grad_(True)
    w = layer.weight.detach().clone().requires_grad_(True)
    wb = layer.base_weight.detach().clone().requires_grad_(True)
    ref = {"chebyshev": _chebyshev, "legendre": _legendre, "jacobi": _jacobi}[name]
    feats = torch.stack(ref(torch.tanh(x_ref), 3), dim=-1)  # (B, in, K)
    silu = x_ref / (1 + torch.exp(-x_ref))
    y_ref = torch.einsum("bik,oik->bo", feats, w) + silu @ wb.T + layer.bias.detach()
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    grads_ref = torch.autograd.grad((y_ref * g).sum(), [x_ref, w, wb])
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-11)


def test_chebyshev_known_values():
    """Hand-checked: T_n(cos a) = cos(n a), on inputs whose tanh is cos a."""
    a = torch.tensor([0.3, 1.1, 2.0], dtype=torch.float64)
    x = torch.atanh(torch.cos(a)).unsqueeze(0)  # (1, 3)
    feats = create_basis("chebyshev", 3, degree=4).double()(x)[0]
    expect = torch.stack([torch.cos(n * a) for n in range(5)], dim=-1)
    torch.testing.assert_close(feats, expect, rtol=1e-10, atol=1e-10)
    assert math.isclose(float(feats[0, 2]), math.cos(0.6), rel_tol=1e-10)
