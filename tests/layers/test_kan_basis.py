"""Known values of every KAN basis (kan_basis.py)."""

from __future__ import annotations

import math

import pytest
import torch

from archbench.layers.kan_basis import (
    BASES,
    BSplineBasis,
    ChebyshevBasis,
    GramBasis,
    GroupRationalBasis,
    HermiteBasis,
    JacobiBasis,
    LegendreBasis,
    MexicanHatBasis,
    MorletBasis,
    RBFBasis,
    SelectableBasis,
    create_basis,
)


def _opts(name: str) -> dict:
    return {"num_groups": 2} if name == "rational" else {}


@pytest.mark.parametrize("name", sorted(BASES))
def test_contract_shape_and_vectorised(name):
    basis = create_basis(name, 4, **_opts(name))
    x = torch.randn(3, 5, 4)
    out = basis(x)
    assert out.shape == (3, 5, 4, basis.n_basis)
    assert torch.isfinite(out).all()
    # features of one input depend on that input alone
    x2 = x.clone()
    x2[..., 0] += 1.0
    out2 = basis(x2)
    torch.testing.assert_close(out2[..., 1:, :], out[..., 1:, :])
    with pytest.raises(ValueError, match="in_features"):
        basis(torch.randn(2, 3))


def test_unknown_basis_lists_names():
    with pytest.raises(ValueError, match="chebyshev"):
        create_basis("spline", 3)


def test_bspline_partition_of_unity_and_support():
    basis = BSplineBasis(3, grid_size=7, spline_order=3, grid_range=(-1.0, 1.0))
    assert basis.n_basis == 10
    x = torch.rand(200, 3) * 1.98 - 0.99
    feats = basis(x)
    torch.testing.assert_close(feats.sum(-1), torch.ones(200, 3))
    assert (feats >= 0).all()
    # each point touches at most order + 1 bases
    assert ((feats > 0).sum(-1) <= 4).all()


def test_bspline_linear_order_is_hat_function():
    basis = BSplineBasis(1, grid_size=4, spline_order=1, grid_range=(0.0, 4.0))
    # knots -1..5; the hat centred on knot 1 is basis index 1
    x = torch.tensor([[0.5], [1.0], [1.5]])
    torch.testing.assert_close(basis(x)[:, 0, 1], torch.tensor([0.5, 1.0, 0.5]))


def test_bspline_grid_from_samples_tracks_quantiles():
    basis = BSplineBasis(2, grid_size=4, spline_order=2)
    x = torch.randn(1000, 2) * 3
    grid = basis.grid_from_samples(x, 4, grid_eps=0.0)
    q = torch.quantile(x, torch.linspace(0, 1, 5), dim=0).T
    torch.testing.assert_close(grid[:, 2:-2], q, atol=0.05, rtol=0)


def test_chebyshev_matches_cosine_closed_form():
    basis = ChebyshevBasis(1, degree=6, squash=None)
    theta = torch.linspace(0.1, 3.0, 17)
    feats = basis(torch.cos(theta)[:, None])[:, 0]
    expected = torch.stack([torch.cos(n * theta) for n in range(7)], -1)
    torch.testing.assert_close(feats, expected, atol=1e-5, rtol=0)


def test_legendre_hermite_closed_forms():
    x = torch.linspace(-1, 1, 11)[:, None]
    t = x[:, 0]
    leg = LegendreBasis(1, degree=4, squash=None)(x)[:, 0]
    torch.testing.assert_close(leg[:, 2], (3 * t**2 - 1) / 2)
    torch.testing.assert_close(leg[:, 3], (5 * t**3 - 3 * t) / 2)
    torch.testing.assert_close(leg[:, 4], (35 * t**4 - 30 * t**2 + 3) / 8)
    her = HermiteBasis(1, degree=4, squash=None)(x * 3)[:, 0]
    u = 3 * t
    torch.testing.assert_close(her[:, 3], u**3 - 3 * u, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(her[:, 4], u**4 - 6 * u**2 + 3, atol=1e-4, rtol=1e-5)


def test_jacobi_reduces_to_legendre_and_known_p2():
    x = torch.linspace(-0.9, 0.9, 9)[:, None]
    jac = JacobiBasis(1, degree=4, squash=None, alpha=0.0, beta=0.0)(x)
    leg = LegendreBasis(1, degree=4, squash=None)(x)
    torch.testing.assert_close(jac, leg)
    t = x[:, 0]
    # P_2^(1,1)(t) = (15 t^2 - 3) / 4
    j11 = JacobiBasis(1, degree=2, squash=None, alpha=1.0, beta=1.0)(x)[:, 0, 2]
    torch.testing.assert_close(j11, (15 * t**2 - 3) / 4)


def test_gram_polynomials_orthogonal_on_their_points():
    m = 9
    basis = GramBasis(1, degree=5, squash=None, num_points=m)
    pts = torch.tensor([(2 * j + 1 - m) / m for j in range(m)], dtype=torch.float64)[:, None]
    feats = basis(pts)[:, 0]  # (m, 6)
    gram = feats.T @ feats
    off = gram - torch.diag(torch.diagonal(gram))
    assert off.abs().max() < 1e-10
    # monic: leading coefficient 1 means p_2(t) = t^2 - beta_1
    t = pts[:, 0]
    torch.testing.assert_close(feats[:, 2], t**2 - basis.betas[1])


def test_polynomials_squash_with_tanh():
    basis = LegendreBasis(2, degree=2)
    x = torch.tensor([[10.0, -10.0]])
    torch.testing.assert_close(basis(x)[0, :, 1], torch.tanh(x[0]))


def test_mexican_hat_and_morlet_shapes():
    mh = MexicanHatBasis.psi(torch.tensor([0.0, 1.0, -1.0, math.sqrt(3.0)]))
    c = 2 / (math.sqrt(3) * math.pi**0.25)
    torch.testing.assert_close(mh[:3], torch.tensor([c, 0.0, 0.0]))
    assert mh[3] < 0  # negative side lobes
    t = torch.linspace(-6, 6, 2001)
    # zero mean (admissibility) for the Ricker wavelet
    assert abs(torch.trapezoid(MexicanHatBasis.psi(t), t).item()) < 1e-3
    mo = MorletBasis.psi(torch.tensor([0.0, math.pi / 5]))
    torch.testing.assert_close(mo, torch.tensor([1.0, -math.exp(-0.5 * (math.pi / 5) ** 2)]))
    basis = MexicanHatBasis(1, n_basis=5, grid_range=(-2, 2))
    feats = basis(torch.tensor([[1.0]]))[0, 0]
    assert feats.argmax().item() == 3  # the wavelet centred on 1.0 responds most


def test_rbf_peak_at_centres():
    basis = RBFBasis(1, n_basis=5, grid_range=(-2, 2))
    feats = basis(torch.tensor([[-2.0], [0.0]]))[:, 0]
    assert feats[0, 0] == 1.0 and feats[1, 2] == 1.0
    torch.testing.assert_close(feats[1, 3], torch.tensor(math.exp(-1.0)))


def test_rational_initialisations_match_their_functions():
    x = torch.linspace(-3, 3, 301)[:, None].repeat(1, 4)
    fns = [
        ("identity", lambda t: t),
        ("gelu", torch.nn.functional.gelu),
        ("swish", torch.nn.functional.silu),
    ]
    for init, fn in fns:
        r = GroupRationalBasis(4, num_groups=2, init=init)
        torch.testing.assert_close(r(x)[..., 0], fn(x), atol=5e-3, rtol=0)
    r = GroupRationalBasis(4, num_groups=2)
    assert r.init == "swish"  # the release's default
    # variance-preserving statistic: E[swish(x)^2] under N(0, 1) is about 0.3558
    z = torch.randn(400_000, 4, generator=torch.Generator().manual_seed(0))
    assert abs(r(z).square().mean().item() - r.second_moment) < 0.01
    assert abs(r.second_moment - 0.3558) < 1e-3
    # groups are independent: changing group 1's denominator leaves group 0 alone
    with torch.no_grad():
        r.denominator[1] = 5.0
    out = r(x)[..., 0]
    torch.testing.assert_close(out[:, :2], torch.nn.functional.silu(x[:, :2]), atol=5e-3, rtol=0)
    assert (out[:, 2:] - torch.nn.functional.silu(x[:, 2:])).abs().max() > 0.5
    with pytest.raises(ValueError, match="divisible"):
        GroupRationalBasis(6, num_groups=4)


def _release_group_rational(x, a, b, groups):
    """KAT's released kernel, written out: P(x) / (1 + |b1||x| + |b2||x|^2 + ...), with the
    numerator a shared by every group and one row of b per contiguous group of features."""
    out = torch.empty_like(x)
    d = x.shape[-1] // groups
    for g in range(groups):
        xs = x[..., g * d : (g + 1) * d]
        num = sum(a[i] * xs**i for i in range(len(a)))
        den = 1 + sum(abs(b[g][j]) * xs.abs() ** (j + 1) for j in range(len(b[g])))
        out[..., g * d : (g + 1) * d] = num / den
    return out


def test_group_rational_matches_the_release_formula():
    torch.manual_seed(0)
    r = GroupRationalBasis(12, num_groups=3).double()
    assert r.numerator.shape == (1, 6) and r.denominator.shape == (3, 4)
    with torch.no_grad():
        r.numerator.copy_(torch.tensor([[0.1, -0.7, 0.3, 0.2, -0.05, 0.01]], dtype=torch.float64))
        r.denominator.copy_(torch.tensor([[-0.8, 0.5, -0.3, 0.1], [0.2, -1.1, 0.4, -0.2],
                                          [1.5, 0.0, -0.6, 0.3]], dtype=torch.float64))  # fmt: skip
    x = torch.randn(5, 7, 12, dtype=torch.float64) * 2
    ref = _release_group_rational(x, r.numerator[0].tolist(), r.denominator.tolist(), groups=3)
    torch.testing.assert_close(r(x)[..., 0], ref)
    # the same values through the analytic-backward path
    xg = x.clone().requires_grad_(True)
    out = r(xg)[..., 0]
    torch.testing.assert_close(out, ref)
    # a hand-computed point: x = -2 in group 0
    a = [0.1, -0.7, 0.3, 0.2, -0.05, 0.01]
    p = sum(c * (-2.0) ** i for i, c in enumerate(a))
    q = 1 + 0.8 * 2 + 0.5 * 4 + 0.3 * 8 + 0.1 * 16
    val = r(torch.full((1, 12), -2.0, dtype=torch.float64))[0, 0, 0]
    assert abs(val.item() - p / q) < 1e-12


def test_selectable_is_weighted_concatenation():
    sel = SelectableBasis(3, candidates=("chebyshev", ("rbf", {"n_basis": 4})))
    assert sel.n_basis == 4 + 4
    x = torch.randn(7, 3)
    with torch.no_grad():
        sel.logits[:, 0] = 20.0  # pick Chebyshev everywhere
    out = sel(x)
    torch.testing.assert_close(out[..., :4], ChebyshevBasis(3)(x), atol=1e-6, rtol=0)
    assert out[..., 4:].abs().max() < 1e-6
    assert sel.selected().tolist() == [0, 0, 0]
    out.sum().backward()
    assert sel.logits.grad is not None


def test_rswaf_peak_and_decay():
    basis = create_basis("rswaf", 1, n_basis=5, grid_range=(-2, 2))
    feats = basis(torch.tensor([[0.0], [1.0]]))[:, 0]
    assert feats[0, 2] == 1.0
    torch.testing.assert_close(feats[1, 2], 1 - torch.tanh(torch.tensor(1.0)) ** 2)


def test_bspline_analytic_backward_matches_autograd():
    from archbench.layers.kan_basis import _cox_de_boor

    basis = BSplineBasis(3, grid_size=5, spline_order=3)
    basis.uniform = False  # the general (Cox-de Boor) path
    x = (torch.rand(20, 3, dtype=torch.float64) * 1.8 - 0.9).requires_grad_(True)
    grid = basis.grid.double()
    w = torch.randn(20, 3, 8, dtype=torch.float64)
    (basis(x) * w).sum().backward()
    ours = x.grad.clone()
    x.grad = None
    (_cox_de_boor(x, grid, 3)[1] * w).sum().backward()
    torch.testing.assert_close(ours, x.grad)
    assert torch.autograd.gradcheck(lambda t: basis(t), (x.detach().requires_grad_(True),))


def test_rational_analytic_backward_passes_gradcheck():
    r = GroupRationalBasis(6, num_groups=3).double()
    with torch.no_grad():
        r.numerator.add_(0.1 * torch.randn_like(r.numerator))
        r.denominator.add_(0.1 * torch.randn_like(r.denominator))
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda t, a, b: r.rational.__func__(_with(r, a, b), t), (x, r.numerator, r.denominator)
    )


def _with(r, a, b):
    """A shallow stand-in for ``r`` whose coefficients are the given tensors."""

    class _R:
        pass

    s = _R()
    s.in_features, s.num_groups, s._check = r.in_features, r.num_groups, r._check
    s.numerator, s.denominator = a, b
    return s


@pytest.mark.parametrize("order", [0, 1, 2, 3, 4])
def test_uniform_fast_path_matches_cox_de_boor(order):
    from archbench.layers.kan_basis import _cox_de_boor

    basis = BSplineBasis(3, grid_size=6, spline_order=order, grid_range=(-1.0, 2.0))
    assert basis.uniform
    x = (torch.rand(50, 3, dtype=torch.float64) * 5 - 2).requires_grad_(True)  # also outside
    w = torch.randn(50, 3, basis.n_basis, dtype=torch.float64)
    fast = basis(x)
    ref = _cox_de_boor(x, basis.grid.double(), order)[1]
    torch.testing.assert_close(fast, ref)
    if order > 0:  # order-0 splines are piecewise constant: no gradient
        (fast * w).sum().backward()
        g_fast = x.grad.clone()
        x.grad = None
        (ref * w).sum().backward()
        torch.testing.assert_close(g_fast, x.grad)
    with torch.no_grad():
        torch.testing.assert_close(basis(x), ref)


@pytest.mark.parametrize("cls", [MexicanHatBasis, MorletBasis])
def test_wavelet_analytic_backward_passes_gradcheck(cls):
    basis = cls(3, n_basis=4).double()
    with torch.no_grad():
        basis.log_scale.add_(0.1 * torch.randn_like(basis.log_scale))
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    from archbench.layers.kan_basis import _FusedBasisFunction

    assert torch.autograd.gradcheck(
        lambda t, c, s: _FusedBasisFunction.apply(t, basis, c, s),
        (x, basis.centres, basis.log_scale),
    )
    # the fast path agrees with the plain formula
    with torch.no_grad():
        plain = basis.psi((x.unsqueeze(-1) - basis.centres) * torch.exp(-basis.log_scale))
    torch.testing.assert_close(basis(x), plain)
