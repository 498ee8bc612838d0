"""Linear layers trained through oneDNN: values and gradients against F.linear, the
fallbacks, the module switch, and a training run with the recipe option."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from archbench.data import load_dataset
from archbench.layers import onednn_linear as onednn_module
from archbench.layers.onednn_linear import OneDNNLinear, onednn_linear, onednn_linears
from archbench.layers.packed_linear import PackedLinear, onednn_linear_available
from archbench.models import create_model
from archbench.train import Recipe, fit

pytestmark = pytest.mark.skipif(
    not onednn_linear_available()[0], reason=onednn_linear_available()[1] or "no oneDNN"
)


def _grads(fn, x, w, b, g):
    y = fn(x, w, b)
    inputs = [x, w] + ([b] if b is not None else [])
    return (y, *torch.autograd.grad(y, inputs, g))


@pytest.mark.parametrize("shape", [(300, 96), (4, 65, 96), (2, 3, 5, 96)])
@pytest.mark.parametrize("bias", [True, False])
def test_values_and_gradients_equal_f_linear(shape, bias):
    """Forward, input, weight and bias gradients against F.linear's, to float32 rounding;
    the products really ran on oneDNN (its backward node, not addmm's)."""
    torch.manual_seed(0)
    x = torch.randn(*shape, requires_grad=True)
    w = torch.randn(160, 96, requires_grad=True)
    b = torch.randn(160, requires_grad=True) if bias else None
    g = torch.randn(*shape[:-1], 160)
    ref = _grads(F.linear, x, w, b, g)
    got = _grads(onednn_linear, x, w, b, g)
    assert type(onednn_linear(x, w, b).grad_fn).__name__ == "_OneDNNLinearFunctionBackward"
    for r, o in zip(ref, got, strict=True):
        assert o.shape == r.shape
        torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-4)
    # the weight gradient is sum_rows g^T x, written out in float64
    x2, g2 = x.detach().double().reshape(-1, 96), g.double().reshape(-1, 160)
    torch.testing.assert_close(got[2].double(), g2.t() @ x2, rtol=1e-5, atol=1e-4)


def test_non_contiguous_input_and_weight():
    torch.manual_seed(1)
    x = torch.randn(40, 64).t().requires_grad_(True)  # (64, 40), strided
    w = torch.randn(40, 30).t().requires_grad_(True)  # (30, 40), strided
    g = torch.randn(64, 30)
    for r, o in zip(_grads(F.linear, x, w, None, g), _grads(onednn_linear, x, w, None, g)):
        torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-4)


def test_other_dtypes_and_vectors_take_f_linear():
    torch.manual_seed(2)
    w = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, 7, dtype=torch.float64)
    y = onednn_linear(x, w)
    assert torch.equal(y, F.linear(x, w)) and type(y.grad_fn).__name__ == "MmBackward0"
    v = torch.randn(7)
    assert torch.equal(onednn_linear(v, w.detach().float()), F.linear(v, w.detach().float()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = onednn_linear(x.float(), w.detach().float())
    assert y.dtype == torch.bfloat16  # autocast's F.linear, not the float32 kernel


def test_compiled_code_takes_f_linear(monkeypatch):
    """Under torch.compile the compiler chooses the kernels (Inductor cannot lower this
    function's backward), so a traced call is plain F.linear."""
    x, w = torch.randn(4, 6), torch.randn(3, 6, requires_grad=True)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert type(onednn_linear(x, w).grad_fn).__name__ != "_OneDNNLinearFunctionBackward"
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: False)
    assert type(onednn_linear(x, w).grad_fn).__name__ == "_OneDNNLinearFunctionBackward"


def test_switch_keeps_parameters_and_puts_the_class_back():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), PackedLinear(16, 4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(6, 8)
    ref = model(x)
    with onednn_linears(model) as n:
        assert n == 1  # the plain nn.Linear only; a subclass keeps its own forward
        assert type(model[0]) is OneDNNLinear and type(model[2]) is PackedLinear
        assert model.state_dict().keys() == before.keys()
        torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-5)
    assert type(model[0]) is nn.Linear
    with onednn_linears(model, enabled=False) as n:
        assert n == 0 and type(model[0]) is nn.Linear
    with pytest.raises(RuntimeError, match="inside"):
        with onednn_linears(model):
            raise RuntimeError("inside")
    assert type(model[0]) is nn.Linear  # put back after an error too
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_training_with_the_recipe_option_follows_the_plain_run(tmp_path, monkeypatch):
    """Two epochs of mixer_pico (its token- and channel-mixing layers are nn.Linear) with
    and without ``onednn_linear``: the same losses and weights to float32 rounding, and
    the model comes back with its own classes."""
    data = load_dataset("shapes:n_train=64,n_val=32,n_test=16,img_size=16", seed=0)
    calls = [0]
    inner = onednn_module._inner

    def counted(*args):
        calls[0] += 1
        return inner(*args)

    monkeypatch.setattr(onednn_module, "_inner", counted)
    runs, products = {}, {}
    for flag in (False, True):
        calls[0] = 0
        torch.manual_seed(0)
        model = create_model("mixer_pico", num_classes=10, img_size=16)
        recipe = Recipe(
            epochs=2, batch_size=16, optimizer="sgd", lr=0.05, adapt=False, onednn_linear=flag
        )
        res = fit(model, data, recipe, tmp_path / str(flag), progress=False)
        assert all(type(m) is not OneDNNLinear for m in model.modules())
        runs[flag] = (res, model.state_dict())
        products[flag] = calls[0]
    assert products[False] == 0 and products[True] > 0  # the oneDNN products ran
    (r0, w0), (r1, w1) = runs[False], runs[True]
    for h0, h1 in zip(r0.history, r1.history, strict=True):
        assert h1["train_loss"] == pytest.approx(h0["train_loss"], rel=1e-4)
    moved = max(float((w0[k] - w1[k]).abs().max()) for k in w0)
    assert moved < 1e-4
    assert "onednn_linear" in Recipe(onednn_linear=True).to_dict()
    assert "onednn_linear" not in Recipe().to_dict()  # off: recipes read as before
