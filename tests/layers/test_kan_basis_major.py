"""KANLinear's basis-major fast path against formulas written out here (float64).

Bases with ``k_major`` compute their features as ``(K, M, in)`` slabs and the layer keeps
its weight stored basis-major; a constant basis function (p_0 = 1) is taken out of the
matrix multiply and the SiLU base branch runs inside the same autograd function. These
tests check the values and every gradient against plain einsum references, run
``gradcheck`` on the fused function with the base weight, and check that the storage
layout changes nothing a user sees: state dicts, safetensors, optimizers, ``.double()``,
a contiguous weight assigned from outside, the no-grad, autocast and meta paths.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from _kan_refs import cox_de_boor, ran_fused_kan_linear

from archbench.layers.kan import KANLinear, _KANLinearFunction


def _three_term(t, deg, first, step):
    """p_0 = 1, p_1 = first(t), p_{n+1} = step(n, t, p_n, p_{n-1})."""
    out = [torch.ones_like(t), first(t)]
    for n in range(1, deg):
        out.append(step(n, t, out[-1], out[-2]))
    return torch.stack(out[: deg + 1], -1)


def _jacobi(t, deg, a, b):
    # Abramowitz & Stegun 22.7.1, written for P_{n} from P_{n-1} and P_{n-2}
    out = [torch.ones_like(t), 0.5 * ((a + b + 2) * t + (a - b))]
    for n in range(2, deg + 1):
        c = 2 * n + a + b
        num = ((c - 1) * (a * a - b * b) + (c - 2) * (c - 1) * c * t) * out[-1]
        num = num - 2 * (n + a - 1) * (n + b - 1) * c * out[-2]
        out.append(num / (2 * n * (n + a + b) * (c - 2)))
    return torch.stack(out[: deg + 1], -1)


POLY = {
    "chebyshev": lambda t, d, o: _three_term(t, d, lambda t: t, lambda n, t, p, q: 2 * t * p - q),
    "legendre": lambda t, d, o: _three_term(
        t, d, lambda t: t, lambda n, t, p, q: ((2 * n + 1) * t * p - n * q) / (n + 1)
    ),
    "hermite": lambda t, d, o: _three_term(t, d, lambda t: t, lambda n, t, p, q: t * p - n * q),
    "gram": lambda t, d, o: _three_term(
        t,
        d,
        lambda t: t,
        lambda n, t, p, q: (
            t * p - n * n * (1 - n * n / o.get("num_points", 32) ** 2) / (4 * n * n - 1) * q
        ),
    ),
    "jacobi": lambda t, d, o: _jacobi(t, d, o.get("alpha", 1.0), o.get("beta", 1.0)),
}

POLY_CASES = [
    ("chebyshev", {"degree": 3}),
    ("chebyshev", {"degree": 1}),
    ("legendre", {"degree": 5}),
    ("hermite", {"degree": 4, "squash": None}),
    ("hermite", {"degree": 3}),
    ("gram", {"degree": 4, "num_points": 9}),
    ("jacobi", {"degree": 4, "alpha": 0.5, "beta": 2.0}),  # B_n != 0
    ("jacobi", {"degree": 3}),
]


def _poly_ref(name, opts, x):
    t = torch.tanh(x) if opts.get("squash", "tanh") == "tanh" else x
    return POLY[name](t, opts["degree"], opts)


def _rbf_ref(layer, x):
    c = torch.linspace(-2.0, 2.0, layer.basis.n_basis, dtype=torch.float64)
    h = 4.0 / (layer.basis.n_basis - 1)
    return torch.exp(-(((x.unsqueeze(-1) - c) / h) ** 2))


def _rswaf_ref(layer, x):
    c = torch.linspace(-2.0, 2.0, layer.basis.n_basis, dtype=torch.float64)
    h = 4.0 / (layer.basis.n_basis - 1)
    return 1 - torch.tanh((x.unsqueeze(-1) - c) / h) ** 2


def _layer(name, opts, seed=0, n_in=5, n_out=3, **kw):
    torch.manual_seed(seed)
    layer = KANLinear(n_in, n_out, basis=name, bias=True, **opts, **kw).double()
    if name in ("rbf", "rswaf"):  # float64 centres (stored float32-rounded)
        layer.basis.centres = torch.linspace(-2.0, 2.0, layer.basis.n_basis, dtype=torch.float64)
    return layer


def _x(seed=1, shape=(2, 3, 5)):
    torch.manual_seed(seed)
    return torch.randn(*shape, dtype=torch.float64) * 1.4


def _compare(layer, feats_fn, extra=()):
    """Layer output and gradients (x, weight, base, bias, extra params) vs the einsum sum."""
    x = _x().requires_grad_(True)
    y = layer(x)
    g = torch.randn_like(y)
    params = [layer.weight, layer.base_weight, layer.bias, *extra]
    grads = torch.autograd.grad((y * g).sum(), [x, *params])
    x_r = x.detach().clone().requires_grad_(True)
    p_r = [p.detach().clone().requires_grad_(True) for p in params]
    w, wb, bias = p_r[:3]
    feats = feats_fn(x_r, *p_r[3:])
    y_r = torch.einsum("...ik,oik->...o", feats, w) + F.silu(x_r) @ wb.T + bias
    torch.testing.assert_close(y, y_r, rtol=1e-12, atol=1e-12)
    grads_r = torch.autograd.grad((y_r * g).sum(), [x_r, *p_r])
    for got, want in zip(grads, grads_r):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize(
    ("name", "opts"), POLY_CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(POLY_CASES)]
)
def test_polynomial_layer_equals_einsum_reference(name, opts):
    layer = _layer(name, opts)
    assert layer.basis.k_major and layer.basis.constant_index == 0
    assert ran_fused_kan_linear(layer(_x().requires_grad_(True)))
    _compare(layer, lambda x: _poly_ref(name, opts, x))


@pytest.mark.parametrize(("name", "ref"), [("rbf", _rbf_ref), ("rswaf", _rswaf_ref)])
def test_radial_layer_equals_einsum_reference(name, ref):
    layer = _layer(name, {"n_basis": 6})
    _compare(layer, lambda x: ref(layer, x))


@pytest.mark.parametrize("name", ["mexican_hat", "morlet"])
def test_wavelet_layer_equals_einsum_reference_with_parameter_gradients(name):
    layer = _layer(name, {"n_basis": 4})
    with torch.no_grad():  # centres and scales off their uniform start
        layer.basis.centres.add_(0.2 * torch.randn_like(layer.basis.centres))
        layer.basis.log_scale.add_(0.2 * torch.randn_like(layer.basis.log_scale))

    def feats(x, c, ls):
        t = (x.unsqueeze(-1) - c) / torch.exp(ls)
        if name == "morlet":
            return torch.cos(5 * t) * torch.exp(-(t**2) / 2)
        return 2 / (math.sqrt(3) * math.pi**0.25) * (1 - t**2) * torch.exp(-(t**2) / 2)

    _compare(layer, feats, extra=(layer.basis.centres, layer.basis.log_scale))


GRADCHECK = [
    ("chebyshev", {"degree": 3}),
    ("jacobi", {"degree": 3, "alpha": 0.5, "beta": 2.0}),
    ("hermite", {"degree": 2, "squash": None}),
    ("rbf", {"n_basis": 4}),
    ("rswaf", {"n_basis": 3}),
    ("mexican_hat", {"n_basis": 3}),
    ("morlet", {"n_basis": 3}),
]


def _gradcheck_fused_with_base(layer, x):
    """gradcheck of the fused function in x, weight, base weight and basis parameters."""
    basis = layer.basis
    x = x.requires_grad_(True)
    params = tuple(p.detach().clone().requires_grad_(True) for p in basis._fused_params(x.dtype))
    w = layer.weight.detach().clone().requires_grad_(True)
    wb = layer.base_weight.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda xx, ww, bb, *pp: _KANLinearFunction.apply(xx, ww, bb, basis, *pp),
        (x, w, wb, *params),
    )


@pytest.mark.parametrize(("name", "opts"), GRADCHECK, ids=[c[0] for c in GRADCHECK])
def test_fused_function_with_base_weight_passes_gradcheck(name, opts):
    layer = _layer(name, opts, seed=2, n_in=3, n_out=2)
    _gradcheck_fused_with_base(layer, _x(3, (4, 3)) * 0.8)


@pytest.mark.parametrize("name", ["chebyshev", "rbf", "mexican_hat"])
def test_weight_layout_is_invisible_in_state_dict_and_training(name, tmp_path):
    from safetensors.torch import load_file, save_file

    layer = _layer(name, {}, n_in=6, n_out=4, basis_major_weight=True)
    w = layer.weight
    assert w.shape == (4, 6, layer.basis.n_basis)
    assert w.permute(2, 0, 1).is_contiguous()  # stored basis-major
    sd = layer.state_dict()
    assert sd["weight"].is_contiguous() and torch.equal(sd["weight"], w)
    save_file(sd, str(tmp_path / "kan.safetensors"))
    other = _layer(name, {}, seed=9, n_in=6, n_out=4, basis_major_weight=True)
    other.load_state_dict(load_file(str(tmp_path / "kan.safetensors")))
    assert other.weight.permute(2, 0, 1).is_contiguous()  # loading keeps the layout
    x = _x(4, (3, 6))
    torch.testing.assert_close(other(x), layer(x), rtol=0, atol=0)
    # an optimizer step: the gradient has the weight's own layout, the update lands
    x.requires_grad_(True)
    layer(x).square().sum().backward()
    assert layer.weight.grad.stride() == layer.weight.stride()
    before = layer.weight.detach().clone()
    torch.optim.SGD(layer.parameters(), lr=0.1).step()
    torch.testing.assert_close(layer.weight.detach(), before - 0.1 * layer.weight.grad)
    assert layer.float().weight.permute(2, 0, 1).is_contiguous()


@pytest.mark.parametrize("name", ["legendre", "rswaf", "morlet"])
def test_contiguous_weight_assigned_from_outside_gives_the_same_result(name):
    layer = _layer(name, {}, n_in=6, n_out=4, basis_major_weight=True)
    plain = _layer(name, {}, n_in=6, n_out=4)
    plain.load_state_dict(layer.state_dict())
    assert plain.weight.is_contiguous() and not layer.weight.is_contiguous()
    x = _x(5, (7, 6)).requires_grad_(True)
    xp = x.detach().clone().requires_grad_(True)
    y, yp = layer(x), plain(xp)
    torch.testing.assert_close(yp, y, rtol=1e-13, atol=1e-13)
    y.square().sum().backward()
    yp.square().sum().backward()
    torch.testing.assert_close(xp.grad, x.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(plain.weight.grad, layer.weight.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "name", ["chebyshev", "jacobi", "rbf", "rswaf", "mexican_hat", "morlet", "selectable"]
)
def test_no_grad_autocast_and_meta_paths_agree(name):
    layer = _layer(name, {}, n_in=6, n_out=4)
    x = _x(6, (5, 6))
    y = layer(x.clone().requires_grad_(True))
    assert ran_fused_kan_linear(y)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), y.detach(), rtol=1e-12, atol=1e-12)
    layer32 = layer.float()
    y32 = layer32(x.float().requires_grad_(True))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_bf = layer32(x.float().requires_grad_(True))
    assert not ran_fused_kan_linear(y_bf)  # autocast takes the plain path
    torch.testing.assert_close(y_bf.float(), y32.detach(), rtol=0.05, atol=0.05)
    if name == "selectable":  # its selection check reads a value: no meta path
        return
    with torch.device("meta"):
        meta = KANLinear(6, 4, basis=name)
        assert meta(torch.empty(5, 6, requires_grad=True)).shape == (5, 4)


@pytest.mark.parametrize("name", ["chebyshev", "legendre", "gram", "hermite", "jacobi"])
def test_float32_fast_path_stays_within_float32_error(name):
    """The float32 path (tanh through sigmoid) against the same layer in float64."""
    torch.manual_seed(7)
    layer = KANLinear(16, 8, basis=name, bias=True)
    x = torch.randn(32, 16) * 1.5
    x32 = x.clone().requires_grad_(True)
    y32 = layer(x32)
    y32.square().sum().backward()
    layer64 = KANLinear(16, 8, basis=name, bias=True).double()
    layer64.load_state_dict(layer.state_dict())
    x64 = x.double().requires_grad_(True)
    y64 = layer64(x64)
    y64.square().sum().backward()
    torch.testing.assert_close(y32.double(), y64, rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(x32.grad.double(), x64.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(
        layer.weight.grad.double(), layer64.weight.grad, rtol=1e-4, atol=1e-4
    )


def _rational_ref(x, num, den, groups):
    """P(x) / (1 + sum_j |b_gj| |x|^j), P shared, b per group of contiguous inputs."""
    xg = x.reshape(*x.shape[:-1], groups, x.shape[-1] // groups)
    p = sum(num[0, i] * xg**i for i in range(num.shape[1]))
    d = 1 + sum(den[:, j - 1 : j].abs() * xg.abs() ** j for j in range(1, den.shape[1] + 1))
    return (p / d).reshape(x.shape)


@pytest.mark.parametrize("init", ["swish", "gelu"])
def test_rational_layer_equals_written_out_group_rational(init):
    torch.manual_seed(11)
    layer = KANLinear(6, 4, basis="rational", num_groups=3, init=init, bias=True).double()
    with torch.no_grad():  # every coefficient away from zero (sign(b) is their derivative)
        layer.basis.denominator.add_(0.05 * torch.rand_like(layer.basis.denominator) + 0.01)
    assert layer.base_weight is None and layer.basis.fused
    x = _x(12, (2, 5, 6)).requires_grad_(True)
    y = layer(x)
    assert ran_fused_kan_linear(y)
    g = torch.randn_like(y)
    params = [layer.weight, layer.bias, layer.basis.numerator, layer.basis.denominator]
    grads = torch.autograd.grad((y * g).sum(), [x, *params])
    x_r = x.detach().clone().requires_grad_(True)
    w, bias, num, den = [p.detach().clone().requires_grad_(True) for p in params]
    y_r = _rational_ref(x_r, num, den, 3) @ w[:, :, 0].T + bias
    torch.testing.assert_close(y, y_r, rtol=1e-12, atol=1e-12)
    grads_r = torch.autograd.grad((y_r * g).sum(), [x_r, w, bias, num, den])
    for got, want in zip(grads, grads_r):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-11)
    with torch.no_grad():  # the plain path (basis.rational) agrees
        torch.testing.assert_close(layer(x), y, rtol=1e-12, atol=1e-12)


def test_rational_fused_function_passes_gradcheck():
    torch.manual_seed(13)
    layer = KANLinear(4, 3, basis="rational", num_groups=2).double()
    basis = layer.basis
    x = (_x(14, (3, 4)) * 0.9).requires_grad_(True)
    num = basis.numerator.detach().clone().requires_grad_(True)
    den = (basis.denominator.detach() + 0.05).requires_grad_(True)
    w = layer.weight.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda xx, ww, a, b: _KANLinearFunction.apply(xx, ww, None, basis, a, b),
        (x, w, num, den),
    )


SELECT_CANDIDATES = (
    ("bspline", {"grid_size": 3, "spline_order": 2}),
    ("chebyshev", {"degree": 2}),
    ("rbf", {"n_basis": 4}),
    ("mexican_hat", {"n_basis": 3}),
)


def _selectable_layer(seed):
    torch.manual_seed(seed)
    layer = KANLinear(5, 3, basis="selectable", candidates=SELECT_CANDIDATES, bias=True).double()
    basis = layer.basis
    knots = torch.arange(-2, 6, dtype=torch.float64) * (2.0 / 3) - 1  # float64 uniform grid
    basis.candidates[0].set_grid(knots.expand(5, -1))
    basis.candidates[2].centres = torch.linspace(-2.0, 2.0, 4, dtype=torch.float64)
    with torch.no_grad():
        basis.logits.normal_()
        basis.candidates[3].centres.add_(0.2 * torch.randn_like(basis.candidates[3].centres))
    return layer


def _selectable_feats(x, logits, centres, log_scale, weights=None):
    knots = torch.arange(-2, 6, dtype=torch.float64) * (2.0 / 3) - 1
    t = (x.unsqueeze(-1) - centres) / torch.exp(log_scale)
    blocks = [
        cox_de_boor(x, knots, 2),
        _poly_ref("chebyshev", {"degree": 2}, x),
        torch.exp(
            -(
                ((x.unsqueeze(-1) - torch.linspace(-2.0, 2.0, 4, dtype=torch.float64)) / (4.0 / 3))
                ** 2
            )
        ),
        2 / (math.sqrt(3) * math.pi**0.25) * (1 - t**2) * torch.exp(-(t**2) / 2),
    ]
    w = torch.softmax(logits, -1) if weights is None else weights
    return torch.cat([b * w[:, j : j + 1] for j, b in enumerate(blocks)], -1)


def test_selectable_layer_equals_softmax_weighted_candidates():
    layer = _selectable_layer(15)
    basis = layer.basis
    assert basis.fused and basis.n_basis == 5 + 3 + 4 + 3
    mh = basis.candidates[3]
    _compare(layer, _selectable_feats, extra=(basis.logits, mh.centres, mh.log_scale))


def test_selectable_after_selection_keeps_the_function_and_the_fast_path():
    from archbench.layers.kan import select_activations

    layer = _selectable_layer(16)
    with torch.no_grad():
        layer.basis.logits[:, 1] += 5.0  # chebyshev kept by every input: others pruned
        layer.basis.logits[0, 3] += 20.0  # but the mexican hat by input 0
    x = _x(17, (4, 5))
    select_activations(layer)
    sel = layer.basis.selection
    assert sel.tolist() == [3, 1, 1, 1, 1]
    onehot = F.one_hot(sel, 4).double()
    mh = layer.basis.candidates[3]
    xr = x.clone().requires_grad_(True)
    y = layer(xr)
    assert ran_fused_kan_linear(y)
    feats = _selectable_feats(x, None, mh.centres.detach(), mh.log_scale.detach(), onehot)
    y_r = torch.einsum("...ik,oik->...o", feats, layer.weight.detach())
    y_r = y_r + F.silu(x) @ layer.base_weight.detach().T + layer.bias.detach()
    torch.testing.assert_close(y, y_r, rtol=1e-12, atol=1e-12)
    y.sum().backward()
    assert layer.basis.logits.grad is None and xr.grad is not None


def test_selectable_fused_function_passes_gradcheck():
    _gradcheck_fused_with_base(_selectable_layer(18), _x(19, (3, 5)) * 0.8)


def _outputs_and_grads(layer, x):
    x = x.clone().requires_grad_(True)
    y = layer(x)
    params = [p for p in layer.parameters() if p.requires_grad]
    return [y, *torch.autograd.grad(y.square().sum(), [x, *params])]


@pytest.mark.parametrize("name", ["chebyshev", "rbf", "mexican_hat"])
def test_fused_basis_without_basis_major_layout_gives_the_same_result(name):
    """A fused basis that only has the (M, in, K) layout (``k_major`` false) takes the
    layer's other branch: one matmul over the flattened features."""
    layer = _layer(name, {}, n_in=6, n_out=4)
    x = _x(20, (7, 6))
    want = _outputs_and_grads(layer, x)
    layer.basis.k_major = False  # this instance only
    got = _outputs_and_grads(layer, x)
    assert ran_fused_kan_linear(got[0])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


def test_selectable_with_a_candidate_without_basis_major_layout():
    layer = _selectable_layer(21)
    x = _x(22, (6, 5))
    want = _outputs_and_grads(layer, x)
    layer.basis.candidates[2].k_major = False  # rbf: (M, in, K) features, transposed in
    got = _outputs_and_grads(layer, x)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["bspline", "chebyshev", "rbf"])
def test_default_weight_is_contiguous_for_lbfgs_and_parameters_to_vector(name):
    """The default layout: LBFGS (KAN fitting) and parameters_to_vector flatten with view."""
    layer = _layer(name, {}, n_in=6, n_out=4)
    assert layer.weight.is_contiguous()
    fast = _layer(name, {}, n_in=6, n_out=4, basis_major_weight=True)
    fast.load_state_dict(layer.state_dict())
    assert not fast.weight.is_contiguous()
    x = _x(3, (7, 6))
    torch.testing.assert_close(fast(x), layer(x), rtol=1e-13, atol=1e-13)
    nn.utils.parameters_to_vector(layer.parameters())
    opt = torch.optim.LBFGS(layer.parameters(), lr=0.5, max_iter=3)
    target = torch.sin(x.sum(-1, keepdim=True)).expand(-1, 4)

    def closure():
        opt.zero_grad()
        loss = (layer(x) - target).square().mean()
        loss.backward()
        return loss

    first = closure().item()
    opt.step(closure)
    assert closure().item() < first


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", [1, 4, 9])
def test_moving_the_basis_axis_copies_exactly(dtype, k):
    """The identity-product re-layout equals the strided copy bit for bit (finite values)."""
    from archbench.layers.kan import _basis_major, _basis_minor, _identity_product_ok

    torch.manual_seed(k)
    w = torch.randn(5, 7, k, dtype=dtype) * torch.logspace(-30, 30, k, dtype=dtype)
    w[0, 0] = 0.0
    assert _identity_product_ok(w)
    bm = _basis_major(w)
    assert bm.shape == (k, 5, 7) and bm.is_contiguous()
    assert bm.data_ptr() != w.data_ptr() or k == 1
    assert torch.equal(bm, w.permute(2, 0, 1))
    back = _basis_minor(bm)
    assert back.shape == w.shape and back.is_contiguous() and torch.equal(back, w)


def test_reduced_matmul_precision_moves_the_basis_axis_by_copy():
    from archbench.layers.kan import _basis_major, _identity_product_ok

    w = torch.randn(3, 4, 5) * 1.234567
    setting = torch.backends.mkldnn.matmul
    before = setting.fp32_precision
    for reduced in ("bf16", "tf32"):
        try:
            setting.fp32_precision = reduced
            assert not _identity_product_ok(w)
            assert _identity_product_ok(w.double())  # float64 GEMMs stay exact
            assert torch.equal(_basis_major(w), w.permute(2, 0, 1))
        finally:
            setting.fp32_precision = before
    assert _identity_product_ok(w) and not _identity_product_ok(w.half())


@pytest.mark.parametrize("name", ["chebyshev", "jacobi"])
def test_contiguous_weight_gets_its_gradient_in_its_own_layout(name):
    """The fused backward hands a contiguous weight a contiguous gradient (no strided copy by
    autograd), equal to the gradient of the same layer stored basis-major."""
    fast = _layer(name, {}, n_in=6, n_out=4, basis_major_weight=True).float()
    plain = _layer(name, {}, n_in=6, n_out=4).float()
    plain.load_state_dict(fast.state_dict())
    x = _x(7, (9, 6)).float()
    seen = {}

    def spy(grad):
        seen["stride"] = grad.stride()
        return grad

    plain.weight.register_hook(spy)
    fast(x).square().sum().backward()
    plain(x).square().sum().backward()
    assert seen["stride"] == plain.weight.stride()
    assert torch.equal(plain.weight.grad, fast.weight.grad.contiguous())
