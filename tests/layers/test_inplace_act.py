"""In-place activations: where ConvNormAct and residual blocks overwrite a temporary.

The in-place form must give the same values and gradients as the plain one, must only
overwrite tensors nothing else reads (the norm's output, a fresh residual sum), and must
really be in place (one allocation fewer per layer, which is what timm does too).
"""

from __future__ import annotations

import collections

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import archbench
from archbench.layers.act import create_act
from archbench.layers.conv import ConvNormAct
from archbench.layers.helpers import add_residual_
from archbench.models.mobileone import MobileOneBlock


class _Ops(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def _ops(fn) -> collections.Counter:
    with _Ops() as mode:
        fn()
    return mode.calls


def test_create_act_inplace_only_when_asked():
    assert create_act("relu").inplace is False
    assert create_act("relu", inplace=True).inplace is True
    assert create_act("leaky_relu", inplace=True).inplace is True
    assert isinstance(create_act("gelu", inplace=True), nn.GELU)  # no in-place form: unchanged


@pytest.mark.parametrize("act", ["relu", "leaky_relu", "silu"])
def test_conv_norm_act_inplace_matches_plain_formula(act):
    torch.manual_seed(0)
    m = ConvNormAct(3, 6, 3, act=act).train()
    assert m.act.inplace is True
    x = torch.randn(4, 3, 8, 8, requires_grad=True)
    seen = {}

    def keep(mod, inputs, out):
        seen["conv"] = out.detach().clone()

    m.conv.register_forward_hook(keep)
    y = m(x)
    # the same computation written out with the out-of-place functional forms
    x2 = x.detach().clone().requires_grad_(True)
    z = F.batch_norm(
        F.conv2d(x2, m.conv.weight, None, 1, 1), None, None, m.norm.weight, m.norm.bias, True
    )
    ref = {"relu": F.relu, "leaky_relu": lambda t: F.leaky_relu(t, 0.1), "silu": F.silu}[act](z)
    torch.testing.assert_close(y, ref)
    g = torch.randn_like(y)
    y.backward(g)
    ref.backward(g)
    torch.testing.assert_close(x.grad, x2.grad)
    # the convolution's output (what a hook on ``conv`` keeps) is not overwritten
    torch.testing.assert_close(seen["conv"], F.conv2d(x.detach(), m.conv.weight, None, 1, 1))


def test_conv_norm_act_is_in_place_only_after_a_norm():
    with_norm = ConvNormAct(3, 4, 3, act="relu").eval()
    no_norm = ConvNormAct(3, 4, 3, norm=None, act="relu").eval()
    x = torch.randn(1, 3, 8, 8)
    with torch.inference_mode():
        assert _ops(lambda: with_norm(x))["relu_"] == 1
        calls = _ops(lambda: no_norm(x))
    assert calls["relu"] == 1 and calls["relu_"] == 0
    forced = ConvNormAct(3, 4, 3, norm=None, act="relu", inplace_act=True)
    assert forced.act.inplace is True


@pytest.mark.parametrize(
    "name",
    [
        "cspdarknet53",
        "cspresnet50",
        "ese_vovnet19b_dw",
        "regnety_040",
        "vgg16",
        "res2net50_26w_4s",
        "resnest50",
        "resnetrs50",
        "seresnet50",
    ],
)
def test_families_activate_in_place_like_timm(name):
    """Every activation of these families runs in place on its own temporary."""
    m = archbench.create_model(name, num_classes=10).eval()
    side = 224 if name == "vgg16" else 64
    with torch.inference_mode():
        calls = _ops(lambda: m(torch.randn(1, 3, side, side)))
    plain = calls["relu"] + calls["leaky_relu"]
    assert plain == 0, f"{plain} activations allocate a new tensor"
    assert calls["relu_"] + calls["leaky_relu_"] > 10


def test_mobileone_block_sums_branches_in_place_with_the_same_values():
    torch.manual_seed(0)
    blk = MobileOneBlock(8, 8, 3, 1, 8, num_branches=3).train()
    for mod in blk.modules():
        if isinstance(mod, nn.BatchNorm2d):
            nn.init.uniform_(mod.weight, 0.5, 1.5)
            nn.init.uniform_(mod.bias, -0.5, 0.5)
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    y = blk(x)
    x2 = x.detach().clone().requires_grad_(True)
    parts = [blk.rbr_skip(x2), blk.rbr_scale(x2)] + [b(x2) for b in blk.rbr_conv]
    ref = F.relu(sum(parts[1:], parts[0]))
    torch.testing.assert_close(y, ref, rtol=0, atol=0)
    y.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)


def test_add_residual_writes_into_its_first_operand_only_when_that_is_the_plain_sum():
    y, s = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    expected = y + s
    s_before = s.clone()
    out = add_residual_(y, s)
    assert out.data_ptr() == y.data_ptr() and torch.equal(out, expected)
    assert torch.equal(s, s_before)
    same = torch.randn(2, 3)
    assert torch.equal(add_residual_(same, same), 2 * same) and not torch.equal(same, 2 * same)
    small = torch.randn(1, 3, 1, 1)  # broadcast: the sum is larger than y
    out = add_residual_(small, s)
    assert out.shape == s.shape and out.data_ptr() != small.data_ptr()
    low = torch.randn(2, 3, dtype=torch.bfloat16)  # the sum would be float32
    out = add_residual_(low, torch.randn(2, 3))
    assert out.dtype == torch.float32 and out.data_ptr() != low.data_ptr()


RESIDUAL_FAMILIES = {
    "resnet18": "archbench.models.resnet",
    "seresnet50": "archbench.models.resnet",
    "skresnext50_32x4d": "archbench.models.resnet",
    "resnetrs50": "archbench.models.resnet_rs",
    "resnest50": "archbench.models.resnest",
    "res2net50_26w_4s": "archbench.models.res2net",
}


@pytest.mark.parametrize("name", sorted(RESIDUAL_FAMILIES))
def test_residual_sums_in_place_give_the_out_of_place_values_and_gradients(name, monkeypatch):
    """A training step with the in-place sum equals one with ``y + shortcut`` (bit for bit:
    the same additions), autograd accepts it, and the in-place sums really happen."""
    import importlib

    module = importlib.import_module(RESIDUAL_FAMILIES[name])

    def step(model):
        x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        out = model(x)
        out.square().sum().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    torch.manual_seed(0)
    model = archbench.create_model(name, num_classes=10, drop_path_rate=0.0).train()
    for mod in model.modules():  # non-trivial norms, so that every branch matters
        if isinstance(mod, nn.BatchNorm2d):
            nn.init.uniform_(mod.weight, 0.5, 1.5)
            nn.init.uniform_(mod.bias, -0.2, 0.2)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with _Ops() as mode:
        out, grads = step(model)
    model.load_state_dict(state)
    model.zero_grad(set_to_none=True)
    monkeypatch.setattr(module, "add_residual_", lambda y, s: y + s)
    with _Ops() as ref_mode:
        ref_out, ref_grads = step(model)
    blocks = 8 if name == "resnet18" else 16
    assert mode.calls["add_"] - ref_mode.calls["add_"] == blocks  # one in-place sum per block
    assert ref_mode.calls["add"] - mode.calls["add"] == blocks
    torch.testing.assert_close(out, ref_out, rtol=0, atol=0)
    assert len(grads) == len(ref_grads)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=0, atol=0)
