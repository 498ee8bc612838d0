"""KANLinear's fused path (features, one matmul, hand-written backward) against plain
references written out here from each basis formula, in float64.

For every basis with a fused path: the layer's output and the gradients of the input, the
spline weights, the base weights and the basis's own parameters equal those of the plain
formula under autograd; ``torch.autograd.gradcheck`` passes on the fused function itself;
and the basis alone (the path KAN convolutions use) agrees as well.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from _kan_refs import cox_de_boor

from archbench.layers.kan import KANLinear, _KANLinearFunction
from archbench.layers.kan_basis import _FusedBasisFunction, create_basis


def _uniform_knots(order: int, grid_size: int) -> torch.Tensor:
    return torch.arange(-order, grid_size + order + 1, dtype=torch.float64) * (2.0 / grid_size) - 1


def _bspline_ref(basis, x):
    return cox_de_boor(x, _uniform_knots(basis.spline_order, basis.grid_size), basis.spline_order)


def _centres(basis, dtype):
    """The stored centres (float32-rounded), checked against the even spacing on (-2, 2)."""
    c = basis.centres.to(dtype)
    expect = torch.linspace(-2.0, 2.0, basis.n_basis, dtype=torch.float64)
    torch.testing.assert_close(c, expect, rtol=0, atol=1e-6)
    return c


def _rbf_ref(basis, x):
    c = _centres(basis, x.dtype)
    return torch.exp(-(((x.unsqueeze(-1) - c) / (4.0 / (basis.n_basis - 1))) ** 2))


def _rswaf_ref(basis, x):
    c = _centres(basis, x.dtype)
    return 1 - torch.tanh((x.unsqueeze(-1) - c) / (4.0 / (basis.n_basis - 1))) ** 2


def _wavelet_t(basis, x, centres, log_scale):
    return (x.unsqueeze(-1) - centres) / torch.exp(log_scale)


def _mexican_ref(basis, x, centres, log_scale):
    t = _wavelet_t(basis, x, centres, log_scale)
    return 2 / (math.sqrt(3) * math.pi**0.25) * (1 - t**2) * torch.exp(-(t**2) / 2)


def _morlet_ref(basis, x, centres, log_scale):
    t = _wavelet_t(basis, x, centres, log_scale)
    return torch.cos(5 * t) * torch.exp(-(t**2) / 2)


def _chebyshev_ref(basis, x):
    t = torch.tanh(x)
    out = [torch.ones_like(t), t]
    for _ in range(2, basis.degree + 1):
        out.append(2 * t * out[-1] - out[-2])
    return torch.stack(out[: basis.degree + 1], -1)


def _hermite_ref(basis, x):
    out = [torch.ones_like(x), x]
    for n in range(1, basis.degree):
        out.append(x * out[-1] - n * out[-2])
    return torch.stack(out[: basis.degree + 1], -1)


# name, options, reference, whether the reference takes (centres, log_scale)
CASES = [
    ("bspline", {"grid_size": 5, "spline_order": 3}, _bspline_ref, False),
    ("bspline", {"grid_size": 3, "spline_order": 1}, _bspline_ref, False),
    ("bspline", {"grid_size": 2, "spline_order": 2}, _bspline_ref, False),
    ("bspline", {"grid_size": 1, "spline_order": 4}, _bspline_ref, False),
    ("rbf", {"n_basis": 6}, _rbf_ref, False),
    ("rswaf", {"n_basis": 5}, _rswaf_ref, False),
    ("mexican_hat", {"n_basis": 4}, _mexican_ref, True),
    ("morlet", {"n_basis": 3}, _morlet_ref, True),
    ("chebyshev", {"degree": 4}, _chebyshev_ref, False),
    ("hermite", {"degree": 3, "squash": None}, _hermite_ref, False),
]
IDS = [f"{c[0]}-{i}" for i, c in enumerate(CASES)]


def _layer(name, opts, seed=0):
    torch.manual_seed(seed)
    layer = KANLinear(4, 3, basis=name, bias=True, **opts).double()
    if name == "bspline":  # float64 knots (the layer stores float32-rounded ones)
        knots = _uniform_knots(layer.basis.spline_order, layer.basis.grid_size)
        layer.basis.set_grid(knots.expand(4, -1))
    if name in ("mexican_hat", "morlet"):
        with torch.no_grad():  # move centres and scales off their uniform start
            layer.basis.centres.add_(0.2 * torch.randn_like(layer.basis.centres))
            layer.basis.log_scale.add_(0.2 * torch.randn_like(layer.basis.log_scale))
    return layer


def _inputs(seed=1):
    torch.manual_seed(seed)
    # a spread that reaches past every grid edge and through the inside
    x = torch.randn(2, 5, 4, dtype=torch.float64) * 1.6
    x[0, 0] = torch.tensor([-3.0, -1.0, 1.0, 2.5], dtype=torch.float64)  # edges and beyond
    return x


def _graph_nodes(fn) -> set[str]:
    names, stack, seen = set(), [fn], set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        names.add(type(node).__name__)
        stack.extend(nxt for nxt, _ in node.next_functions)
    return names


@pytest.mark.parametrize(("name", "opts", "ref", "wavelet"), CASES, ids=IDS)
def test_fused_layer_equals_written_out_formula(name, opts, ref, wavelet):
    layer = _layer(name, opts)
    assert layer.basis.fused
    x = _inputs().requires_grad_(True)
    y = layer(x)
    assert "_KANLinearFunctionBackward" in _graph_nodes(y.grad_fn)  # the fused path ran
    g = torch.randn_like(y)
    params = [layer.weight, layer.base_weight, layer.bias]
    if wavelet:
        params += [layer.basis.centres, layer.basis.log_scale]
    grads = torch.autograd.grad((y * g).sum(), [x, *params])

    x_r = x.detach().clone().requires_grad_(True)
    p_r = [p.detach().clone().requires_grad_(True) for p in params]
    w, wb, bias = p_r[:3]
    feats = ref(layer.basis, x_r, *p_r[3:]) if wavelet else ref(layer.basis, x_r)
    y_r = torch.einsum("...ik,oik->...o", feats, w) + F.silu(x_r) @ wb.T + bias
    torch.testing.assert_close(y, y_r, rtol=1e-12, atol=1e-12)
    grads_r = torch.autograd.grad((y_r * g).sum(), [x_r, *p_r])
    for got, want in zip(grads, grads_r):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize(("name", "opts", "ref", "wavelet"), CASES, ids=IDS)
def test_fused_function_passes_gradcheck(name, opts, ref, wavelet):
    layer = _layer(name, opts, seed=2)
    basis = layer.basis
    x = (_inputs(3)[0] * 0.9).requires_grad_(True)  # (5, 4) rows
    params = tuple(p.detach().clone().requires_grad_(True) for p in basis._fused_params(x.dtype))
    w = layer.weight.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda xx, ww, *pp: _KANLinearFunction.apply(xx, ww, None, basis, *pp), (x, w, *params)
    )
    assert torch.autograd.gradcheck(
        lambda xx, *pp: _FusedBasisFunction.apply(xx, basis, *pp), (x, *params)
    )


@pytest.mark.parametrize(("name", "opts", "ref", "wavelet"), CASES, ids=IDS)
def test_basis_alone_equals_formula_with_and_without_grad(name, opts, ref, wavelet):
    basis = _layer(name, opts).basis
    x = _inputs(4)
    extra = (basis.centres, basis.log_scale) if wavelet else ()
    with torch.no_grad():
        expect = ref(basis, x, *extra)
        torch.testing.assert_close(basis(x), expect, rtol=1e-12, atol=1e-12)
    xg = x.clone().requires_grad_(True)
    torch.testing.assert_close(basis(xg), expect, rtol=1e-12, atol=1e-12)


def test_fused_path_in_float32_matches_float64():
    """The float32 fast path (e.g. RSWAF's tanh through sigmoid) stays within float32 error."""
    for name in ("rswaf", "rbf", "bspline", "mexican_hat", "morlet"):
        torch.manual_seed(5)
        layer = KANLinear(16, 8, basis=name)
        x = torch.randn(32, 16) * 1.5
        y32 = layer(x.requires_grad_(True))
        layer64 = KANLinear(16, 8, basis=name).double()
        layer64.load_state_dict(layer.state_dict())
        y64 = layer64(x.detach().double())
        torch.testing.assert_close(y32.double(), y64, rtol=1e-5, atol=1e-5)


def test_feature_gradient_workspace_is_reused_not_leaked():
    """Two layers of different shapes, alternating: results stay those of fresh buffers."""
    torch.manual_seed(6)
    a = KANLinear(6, 4, basis="rbf").double()
    b = KANLinear(5, 3, basis="rbf").double()
    xa = torch.randn(7, 6, dtype=torch.float64, requires_grad=True)
    xb = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    first = [torch.autograd.grad(m(x).square().sum(), x)[0] for m, x in ((a, xa), (b, xb))]
    again = [torch.autograd.grad(m(x).square().sum(), x)[0] for m, x in ((b, xb), (a, xa))]
    torch.testing.assert_close(first[0], again[1])
    torch.testing.assert_close(first[1], again[0])


def test_unfused_cases_fall_back():
    """Adaptive grids, Gram with a post activation and track_activations use the plain path."""
    layer = KANLinear(3, 2, basis="gram", post_act="silu")
    assert not layer.basis.fused
    x = torch.randn(4, 3, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad is not None
    spline = KANLinear(3, 2, basis="bspline")
    spline.update_grid(torch.randn(64, 3) * 2)
    assert not spline.basis.fused
    assert create_basis("rbf", 3).fused


@pytest.mark.parametrize("name", ["rbf", "rswaf", "mexican_hat", "morlet", "bspline", "chebyshev"])
def test_meta_device_gives_shapes(name):
    with torch.device("meta"):
        layer = KANLinear(5, 2, basis=name)
        y = layer(torch.empty(3, 5, requires_grad=True))
    assert y.shape == (3, 2) and y.device.type == "meta"
