"""PackedLinear: oneDNN's packed linear kernel behind an nn.Linear, for CPU inference."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

from archbench.layers.packed_linear import PackedLinear, onednn_linear_available

pytestmark = pytest.mark.skipif(
    not onednn_linear_available()[0], reason="torch build without oneDNN"
)


class _CountPacked(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.packed_calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ == "_linear_pointwise":
            self.packed_calls += 1
        return func(*args, **(kwargs or {}))


def _reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, act: str):
    """x W^T + b, then GELU written out: exact 0.5 y (1 + erf(y / sqrt 2)), or the tanh form."""
    y = torch.einsum("...i,oi->...o", x.double(), w.double())
    if b is not None:
        y = y + b.double()
    if act == "gelu":
        y = 0.5 * y * (1 + torch.erf(y / math.sqrt(2)))
    elif act == "gelu_tanh":
        y = 0.5 * y * (1 + torch.tanh(math.sqrt(2 / math.pi) * (y + 0.044715 * y**3)))
    return y.float()


@pytest.mark.parametrize("act", ["none", "gelu", "gelu_tanh"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("layout", ["2d", "3d", "strided"])
def test_packed_kernel_computes_the_linear_layer(act, bias, layout):
    torch.manual_seed(0)
    lin = nn.Linear(48, 40, bias=bias)
    layer = PackedLinear.from_linear(lin, act)
    x = {
        "2d": torch.randn(37, 48),
        "3d": torch.randn(3, 11, 48),
        "strided": torch.randn(11, 3, 48).transpose(0, 1),  # not contiguous
    }[layout]
    with torch.no_grad(), _CountPacked() as count:
        out = layer(x)
    assert count.packed_calls == 1, "the oneDNN kernel did not run"
    torch.testing.assert_close(out, _reference(x, lin.weight, lin.bias, act), rtol=1e-5, atol=1e-5)


def test_shares_parameters_state_dict_and_repacks_after_a_change():
    lin = nn.Linear(16, 8)
    layer = PackedLinear.from_linear(lin)
    assert layer.weight is lin.weight and layer.bias is lin.bias
    assert layer.state_dict().keys() == lin.state_dict().keys()
    x = torch.randn(5, 16)
    with torch.no_grad():
        layer(x)
        lin.weight.mul_(-2.0)  # in place: the packed copy must follow
        torch.testing.assert_close(layer(x), _reference(x, lin.weight, lin.bias, "none"))


def test_deepcopy_and_save_drop_the_opaque_packed_weight():
    layer = PackedLinear.from_linear(nn.Linear(16, 8), "gelu")
    x = torch.randn(4, 16)
    with torch.no_grad():
        want = layer(x)  # packs
        twin = copy.deepcopy(layer)
        buf = io.BytesIO()
        torch.save(layer, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
        torch.testing.assert_close(twin(x), want)
        torch.testing.assert_close(loaded(x), want)


def test_autograd_and_other_dtypes_take_the_plain_path():
    torch.manual_seed(0)
    lin = nn.Linear(12, 6)
    layer = PackedLinear.from_linear(lin, "gelu")
    x = torch.randn(4, 12, requires_grad=True)
    with _CountPacked() as count:
        out = layer(x)
        out.sum().backward()
    assert count.packed_calls == 0
    x2 = x.detach().clone().requires_grad_(True)
    torch.nn.functional.gelu(lin(x2)).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    with torch.no_grad(), _CountPacked() as count:
        layer.double()(x.detach().double())
    assert count.packed_calls == 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="act must be one of"):
        PackedLinear.from_linear(nn.Linear(4, 4), "relu")
    with pytest.raises(TypeError, match="needs an nn.Linear"):
        PackedLinear.from_linear(nn.Conv2d(4, 4, 1))
