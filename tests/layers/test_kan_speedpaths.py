"""KANLinear's two fused layouts and the per-thread scratch buffers, against formulas
written out here (float64).

A layer with a contiguous weight (the default) runs a basis with ``k_minor_ok`` on its
``(M, in, K)`` features and one matrix multiply; a basis-major weight keeps the
basis-major products. Both must give the values and gradients of the plain formula
(B-splines by the Cox-de Boor recursion, the radial, wavelet and group-rational formulas,
the softmax-weighted candidates of the selectable basis), pass ``gradcheck``, and stay
correct when temporaries in reused scratch buffers meet interleaved forward passes.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from _kan_refs import cox_de_boor, ran_fused_kan_linear

from archbench.layers import kan_basis
from archbench.layers.kan import KANLinear, _k_major_call, _KANLinearFunction

KNOTS = torch.arange(-3, 9, dtype=torch.float64) * (2.0 / 5) - 1  # order 3, 5 intervals


def _radial_t(x, n):
    c = torch.linspace(-2.0, 2.0, n, dtype=torch.float64)
    return (x.unsqueeze(-1) - c) / (4.0 / (n - 1))


def _wavelet_t(x, centres, log_scale):
    return (x.unsqueeze(-1) - centres) / torch.exp(log_scale)


def _mexican(x, centres, log_scale):
    t = _wavelet_t(x, centres, log_scale)
    return 2 / (math.sqrt(3) * math.pi**0.25) * (1 - t**2) * torch.exp(-(t**2) / 2)


def _morlet(x, centres, log_scale):
    t = _wavelet_t(x, centres, log_scale)
    return torch.cos(5 * t) * torch.exp(-(t**2) / 2)


def _rational(x, num, den, groups):
    xg = x.reshape(*x.shape[:-1], groups, -1)
    p = sum(num[0, i] * xg**i for i in range(num.shape[1]))
    d = 1 + sum(den[:, j, None].abs() * xg.abs() ** (j + 1) for j in range(den.shape[1]))
    return (p / d).reshape(x.shape).unsqueeze(-1)


def _selectable(x, logits, centres, log_scale):
    t = torch.tanh(x)
    blocks = [
        cox_de_boor(x, KNOTS, 3),
        torch.stack([torch.ones_like(t), t, 2 * t * t - 1, 4 * t**3 - 3 * t], -1),
        torch.exp(-_radial_t(x, 8).square()),
        _mexican(x, centres, log_scale),
    ]
    w = torch.softmax(logits, -1)
    return torch.cat([b * w[:, j : j + 1] for j, b in enumerate(blocks)], -1)


# name, reference feats(x, *basis params), the basis parameters the reference takes
REFS = {
    "bspline": (lambda x: cox_de_boor(x, KNOTS, 3), lambda b: []),
    "rbf": (lambda x: torch.exp(-_radial_t(x, 6).square()), lambda b: []),
    "rswaf": (lambda x: 1 - torch.tanh(_radial_t(x, 5)).square(), lambda b: []),
    "mexican_hat": (_mexican, lambda b: [b.centres, b.log_scale]),
    "morlet": (_morlet, lambda b: [b.centres, b.log_scale]),
    "rational": (
        lambda x, a, b: _rational(x, a, b, 2),
        lambda b: [b.numerator, b.denominator],
    ),
    "selectable": (
        _selectable,
        lambda b: [b.logits, b.candidates[3].centres, b.candidates[3].log_scale],
    ),
}
OPTS = {"rbf": {"n_basis": 6}, "rswaf": {"n_basis": 5}, "rational": {"num_groups": 2}}


def _layer(name, basis_major, seed=0, n_in=4, n_out=3):
    torch.manual_seed(seed)
    layer = KANLinear(
        n_in, n_out, basis=name, bias=True, basis_major_weight=basis_major, **OPTS.get(name, {})
    ).double()
    basis = layer.basis
    spline = basis if name == "bspline" else None
    if name == "selectable":
        spline = basis.candidates[0]
        basis.candidates[2].centres = torch.linspace(-2.0, 2.0, 8, dtype=torch.float64)
    if spline is not None:  # float64 knots (the layer stores float32-rounded ones)
        spline.set_grid(KNOTS.expand(n_in, -1))
    if name in ("rbf", "rswaf"):
        basis.centres = torch.linspace(-2.0, 2.0, basis.n_basis, dtype=torch.float64)
    with torch.no_grad():  # parameters off their symmetric start
        for p in REFS[name][1](basis):
            p.add_(0.2 * torch.randn_like(p))
    return layer


def _x(seed=1, shape=(2, 5, 4)):
    torch.manual_seed(seed)
    x = torch.randn(*shape, dtype=torch.float64) * 1.6
    x.view(-1, shape[-1])[0] = torch.tensor([-3.0, -1.0, 1.0, 2.5])[: shape[-1]]  # past edges
    return x


CASES = [(n, bm) for n in REFS for bm in (False, True)]
IDS = [f"{n}-{'basis_major' if bm else 'contiguous'}" for n, bm in CASES]


@pytest.mark.parametrize(("name", "basis_major"), CASES, ids=IDS)
def test_both_layouts_equal_the_written_out_formula(name, basis_major):
    layer = _layer(name, basis_major)
    basis = layer.basis
    # a contiguous weight runs (M, in, K) features; a basis-major one the basis-major
    # products (K = 1, the rational basis, is both layouts at once)
    assert basis.k_minor_ok and basis.fused
    assert _k_major_call(basis, layer.weight) == (basis_major and basis.n_basis > 1)
    x = _x().requires_grad_(True)
    y = layer(x)
    assert ran_fused_kan_linear(y)
    g = torch.randn_like(y)
    extra = REFS[name][1](basis)
    params = [layer.weight, layer.bias, *extra]
    if layer.base_weight is not None:
        params.append(layer.base_weight)
    grads = torch.autograd.grad((y * g).sum(), [x, *params])

    x_r = x.detach().clone().requires_grad_(True)
    p_r = [p.detach().clone().requires_grad_(True) for p in params]
    feats = REFS[name][0](x_r, *p_r[2 : 2 + len(extra)])
    y_r = torch.einsum("...ik,oik->...o", feats, p_r[0]) + p_r[1]
    if layer.base_weight is not None:
        y_r = y_r + F.silu(x_r) @ p_r[-1].T
    torch.testing.assert_close(y, y_r, rtol=1e-12, atol=1e-12)
    grads_r = torch.autograd.grad((y_r * g).sum(), [x_r, *p_r])
    for got, want in zip(grads, grads_r):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-11)


def _as_layout(w, basis_major):
    """The same values stored contiguous or basis-major (a differentiable re-layout)."""
    return w.permute(2, 0, 1).contiguous().permute(1, 2, 0) if basis_major else w


@pytest.mark.parametrize(("name", "basis_major"), CASES, ids=IDS)
def test_fused_function_passes_gradcheck_in_both_layouts(name, basis_major):
    layer = _layer(name, basis_major, seed=2, n_in=4, n_out=2)
    basis = layer.basis
    x = (_x(3, (3, 4)) * 0.8).requires_grad_(True)
    params = tuple(p.detach().clone().requires_grad_(True) for p in basis._fused_params(x.dtype))
    w = layer.weight.detach().contiguous().requires_grad_(True)
    wb = None
    if layer.base_weight is not None:
        wb = layer.base_weight.detach().clone().requires_grad_(True)
    assert _k_major_call(basis, _as_layout(w, basis_major)) == (basis_major and basis.n_basis > 1)

    def fn(xx, ww, bb, *pp):
        return _KANLinearFunction.apply(xx, _as_layout(ww, basis_major), bb, basis, *pp)

    assert torch.autograd.gradcheck(fn, (x, w, wb, *params))


@pytest.mark.parametrize("name", ["bspline", "morlet", "rational", "selectable"])
@pytest.mark.parametrize("basis_major", [False, True])
def test_interleaved_passes_share_scratch_safely(name, basis_major):
    """Two layers of one shape (the same scratch buffers): both forwards, then both
    backwards, give what each gives alone."""
    a = _layer(name, basis_major, seed=4)
    b = _layer(name, basis_major, seed=5)
    xa, xb = _x(6), _x(7) * 0.7

    def alone(m, x):
        x = x.clone().requires_grad_(True)
        y = m(x)
        return [y, *torch.autograd.grad(y.square().sum(), [x, *m.parameters()])]

    want = [alone(a, xa), alone(b, xb)]
    xs = [xa.clone().requires_grad_(True), xb.clone().requires_grad_(True)]
    ys = [a(xs[0]), b(xs[1])]
    got = [
        [ys[i], *torch.autograd.grad(ys[i].square().sum(), [xs[i], *m.parameters()])]
        for i, m in ((1, b), (0, a))
    ][::-1]
    for g_list, w_list in zip(got, want):
        for g, w in zip(g_list, w_list):
            torch.testing.assert_close(g, w, rtol=0, atol=0)


def test_scratch_buffers_are_per_role_shape_and_reused():
    like = torch.empty(3, 4)
    first = kan_basis._scratch("test_role", like)
    assert kan_basis._scratch("test_role", like) is first  # reused
    assert kan_basis._scratch("test_other", like) is not first  # one buffer per role
    assert kan_basis._scratch("test_role", torch.empty(4, 3)).shape == (4, 3)
    assert kan_basis._scratch("test_role", like.double()).dtype == torch.float64
    mib = 2**18  # float32 elements in 1 MiB
    for i in range(100):  # many shapes: old ones are evicted, the bytes kept stay bounded
        kan_basis._scratch("test_role", torch.empty(i + 1, mib))
    kept = [b.numel() * 4 for b in kan_basis._SCRATCH.bufs.values()]
    assert sum(kept) <= kan_basis.SCRATCH_BYTES == 64 * 2**20
    newest = list(kan_basis._SCRATCH.bufs)[-1]
    assert newest[1] == (64, mib)  # the last one within the limit; 65-100 MiB were not kept
    big = torch.empty(65, mib)  # over the limit: a new buffer every call, none kept
    assert kan_basis._scratch("test_big", big) is not kan_basis._scratch("test_big", big)
    assert not any(key[0] == "test_big" for key in kan_basis._SCRATCH.bufs)
    meta = torch.empty(3, 4, device="meta")  # other devices: a plain new buffer each time
    assert kan_basis._scratch("test_role", meta) is not kan_basis._scratch("test_role", meta)


@pytest.mark.parametrize("name", ["rswaf", "mexican_hat", "morlet", "rational"])
def test_float32_layers_stay_within_float32_error(name):
    torch.manual_seed(8)
    layer = KANLinear(16, 8, basis=name, **OPTS.get(name, {}))
    x = (torch.randn(32, 16) * 1.5).requires_grad_(True)
    y = layer(x)
    y.square().sum().backward()
    ref = KANLinear(16, 8, basis=name, **OPTS.get(name, {})).double()
    ref.load_state_dict(layer.state_dict())
    x64 = x.detach().double().requires_grad_(True)
    y64 = ref(x64)
    y64.square().sum().backward()
    torch.testing.assert_close(y.double(), y64, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-4, atol=1e-4)
