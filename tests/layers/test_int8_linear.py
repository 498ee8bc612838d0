"""DynamicInt8Linear against the quantization arithmetic written out in numpy."""

from __future__ import annotations

import copy
import io
import pickle

import numpy as np
import pytest
import torch
import torch.nn as nn

from archbench.layers.int8_linear import (
    DynamicInt8Linear,
    int8_linear_available,
    quantize_weight_per_channel,
)

pytestmark = pytest.mark.skipif(not int8_linear_available()[0], reason="no x86 int8 kernel")


def _layer(seed: int = 0, cin: int = 64, cout: int = 32, bias: bool = True) -> nn.Linear:
    torch.manual_seed(seed)
    lin = nn.Linear(cin, cout, bias=bias)
    with torch.no_grad():  # rows three decades apart: a per-tensor scale would lose the small ones
        lin.weight.mul_(torch.logspace(-2, 1, cout)[:, None])
    return lin


def _reference(lin: nn.Linear, x: torch.Tensor, reduce_range: bool) -> np.ndarray:
    """Per-channel symmetric int8 weights, per-tensor affine activations on [0, 255] (or
    [0, 127]) over the batch's range widened to include 0, integer product, rescale, bias."""
    w = lin.weight.detach().numpy().astype(np.float64)
    s = np.abs(w).max(axis=1) / 127.0
    q = np.clip(np.round(w / s[:, None]), -127, 127)
    xs = x.numpy().astype(np.float64).reshape(-1, w.shape[1])
    lo, hi = min(xs.min(), 0.0), max(xs.max(), 0.0)
    qmax = 127 if reduce_range else 255
    scale = (hi - lo) / qmax
    zero = np.clip(np.round(-lo / scale), 0, qmax)
    xq = np.clip(np.round(xs / scale) + zero, 0, qmax)
    out = ((xq - zero) @ q.T) * scale * s[None, :]
    if lin.bias is not None:
        out = out + lin.bias.detach().numpy().astype(np.float64)
    return out.reshape(*x.shape[:-1], w.shape[0])


def test_weight_codes_and_scales_per_channel():
    lin = _layer()
    q, scale = quantize_weight_per_channel(lin.weight)
    w = lin.weight.detach().double()
    expected_scale = w.abs().amax(1) / 127
    torch.testing.assert_close(scale.double(), expected_scale, rtol=1e-6, atol=0)
    assert q.dtype == torch.int8 and int(q.abs().max()) == 127
    assert torch.equal(q.long(), torch.round(w / scale.double()[:, None]).long())
    assert (
        (q.double() * scale.double()[:, None] - w).abs() <= scale.double()[:, None] / 2 + 1e-7
    ).all()
    zero_q, zero_s = quantize_weight_per_channel(torch.zeros(3, 4))
    assert torch.equal(zero_q, torch.zeros(3, 4, dtype=torch.int8)) and torch.equal(
        zero_s, torch.ones(3)
    )
    with pytest.raises(ValueError, match="2-d"):
        quantize_weight_per_channel(torch.zeros(2, 2, 2))
    with pytest.raises(ValueError, match="NaN or inf"):
        quantize_weight_per_channel(torch.tensor([[float("nan"), 1.0]]))


@pytest.mark.parametrize("reduce_range", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_forward_is_the_int8_arithmetic(reduce_range, bias):
    lin = _layer(bias=bias)
    x = torch.randn(5, 7, 64, generator=torch.Generator().manual_seed(1)) * 3 + 0.5
    layer = DynamicInt8Linear.from_linear(lin, reduce_range=reduce_range)
    with torch.no_grad():
        out = layer(x).double().numpy()
        exact = lin(x).double().numpy()
    ref = _reference(lin, x, reduce_range)
    assert out.shape == (5, 7, 32)
    # the kernel computes the int8 arithmetic (float32 rescale: ~1e-6 of the range) ...
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-5 * np.abs(ref).max())
    # ... which is not the float layer: the test would notice a float fallback
    assert np.abs(out - exact).max() > 100 * np.abs(out - ref).max()
    # a non-contiguous input (a transposed view) gives the same result
    xt = x.transpose(1, 2).contiguous().transpose(1, 2)
    with torch.no_grad():
        np.testing.assert_array_equal(layer(xt).numpy(), out.astype(np.float32))


def test_copies_state_dict_and_pickle_give_the_same_outputs():
    lin = _layer()
    layer = DynamicInt8Linear.from_linear(lin)
    x = torch.randn(4, 64)
    with torch.no_grad():
        ref = layer(x)
        assert torch.equal(copy.deepcopy(layer)(x), ref)
        assert torch.equal(pickle.loads(pickle.dumps(layer))(x), ref)
        buf = io.BytesIO()
        torch.save(layer.state_dict(), buf)
        other = DynamicInt8Linear.from_linear(_layer(seed=5))
        other(x)  # packs its own weights first: loading must replace them
        other.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
        assert torch.equal(other(x), ref)
    assert set(layer.state_dict()) == {"weight_int8", "weight_scale", "bias"}
    torch.testing.assert_close(layer.weight, lin.weight.detach(), rtol=0, atol=0.06)


def test_bad_input_is_refused_with_the_reason():
    layer = DynamicInt8Linear.from_linear(_layer())
    with pytest.raises(RuntimeError, match="for inference"):
        layer(torch.randn(2, 64, requires_grad=True))
    with pytest.raises(TypeError, match="float32 CPU input"):
        layer(torch.randn(2, 64, dtype=torch.float64))
    with pytest.raises(ValueError, match="expects 64 input features"):
        layer(torch.randn(2, 63))
    with pytest.raises(TypeError, match="nn.Linear"):
        DynamicInt8Linear.from_linear(nn.Conv2d(3, 3, 1))
