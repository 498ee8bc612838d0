"""archbench.optimize: exact BatchNorm folds, equal outputs on every CPU variant, refusals."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import archbench
from archbench.commands.bench import bench_models, print_bench_table
from archbench.layers.int8_linear import DynamicInt8Linear
from archbench.layers.packed_linear import PackedLinear
from archbench.models import create_model, get_model_card, list_models
from archbench.optimize import (
    FP32_TOLERANCE,
    find_conv_bn_pairs,
    fold_batchnorm,
    optimize,
    outputs_match,
)

CPU = list_models(scale="cpu")
# CPU-scale variants that optimize refuses, with a phrase of the reason. None today: a
# variant that starts being refused fails the test below until it is listed here.
REFUSED: dict[str, str] = {}
# Variants that optimize(..., int8_linear=True) refuses, with a phrase of the reason.
INT8_REFUSED: dict[str, str] = {}
# The stated float32 tolerance, written out: |opt - ref| <= 1e-4 + 1e-4 * max|ref|.
RTOL = ATOL = 1e-4


def _close(out: torch.Tensor, ref: torch.Tensor, rtol: float = RTOL, atol: float = ATOL):
    allowed = atol + rtol * ref.abs().max().item()
    diff = (out.float() - ref.float()).abs().max().item()
    assert diff <= allowed, f"max |difference| {diff:.3g} > allowed {allowed:.3g}"


def _random_bn(bn: nn.BatchNorm2d, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    n = bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(n, generator=g))
        bn.running_var.copy_(torch.rand(n, generator=g) + 0.5)
        bn.weight.copy_(torch.randn(n, generator=g))
        bn.bias.copy_(torch.randn(n, generator=g))


class ConvBN(nn.Module):
    """conv1 -> bn1 by attribute (not a Sequential), then ReLU, pool and a linear head."""

    def __init__(self, extra: str = "") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=True)
        self.bn1 = nn.BatchNorm2d(4, eps=1e-3)
        self.fc = nn.Linear(4, 5)
        self.extra = extra
        _random_bn(self.bn1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = self.conv1(x) if self.extra == "conv_twice" else None
        y = self.conv1(x)
        if self.extra == "relu_between":
            y = F.relu(y)
        if self.extra == "inplace_between":
            y = y.mul_(2.0)
        z = self.bn1(y)
        if self.extra == "also_used":  # the pre-BN tensor feeds a second branch
            z = z + y
        if self.extra == "conv_twice":  # the conv also makes a tensor the BN never sees
            z = z + first
        if self.extra == "reads_weight":  # uses the conv weight outside the convolution
            z = z * self.conv1.weight.mean()
        if self.extra == "noisy":  # not deterministic in eval mode
            z = F.dropout(z, 0.5, training=True)
        return self.fc(F.relu(z).mean((2, 3)))


def test_fold_equals_hand_computed_fold():
    model = ConvBN().eval()
    conv, bn = model.conv1, model.bn1
    w = conv.weight.detach().numpy().astype(np.float64)
    b = conv.bias.detach().numpy().astype(np.float64)
    g, beta = bn.weight.detach().numpy(), bn.bias.detach().numpy()
    m, v = bn.running_mean.numpy(), bn.running_var.numpy()
    scale = g / np.sqrt(v + 1e-3)  # the eps the layer was built with
    w_expected = w * scale[:, None, None, None]
    b_expected = (b - m) * scale + beta
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = model(x)
    pairs = find_conv_bn_pairs(model, x)
    assert pairs == [("conv1", "bn1")]
    fold_batchnorm(model, pairs)
    assert isinstance(model.bn1, nn.Identity)
    np.testing.assert_allclose(model.conv1.weight.detach().numpy(), w_expected, rtol=1e-6)
    np.testing.assert_allclose(model.conv1.bias.detach().numpy(), b_expected, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        _close(model(x), ref, 1e-5, 1e-6)


@pytest.mark.parametrize("extra", ["relu_between", "inplace_between", "also_used", "conv_twice"])
def test_pairs_need_direct_single_use_data_flow(extra):
    model = ConvBN(extra).eval()
    assert find_conv_bn_pairs(model, torch.randn(2, 3, 8, 8)) == []


def test_sequential_pairs_and_conv_without_bias():
    seq = nn.Sequential(
        nn.Conv2d(3, 6, 3, bias=False), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 6, 1)
    )
    _random_bn(seq[1], 2)
    x = torch.randn(2, 3, 9, 9)
    assert find_conv_bn_pairs(seq.eval(), x) == [("0", "1")]
    with torch.no_grad():
        ref = seq(x)
    fast = optimize(seq, example_input=x)
    assert isinstance(fast[1], nn.Identity) and isinstance(seq[1], nn.BatchNorm2d)
    assert fast[0].weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        _close(fast(x), ref)


def _optimize_variant(name: str, refused: dict[str, str], **kwargs):
    """(original, optimized, fresh input) for a CPU variant, or None where ``optimize``
    refuses it: then it must be listed in ``refused`` with a phrase of the reason."""
    torch.manual_seed(0)
    model = create_model(name)
    size = get_model_card(name).img_size
    before = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        fast = optimize(model, **kwargs)
    except ValueError as err:
        assert name in refused, f"{name} refused: {err}"
        assert refused[name] in str(err)
        return None
    assert name not in refused, f"{name} is listed as refused but was accepted"
    assert model.training, "optimize must leave the original's mode alone"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not fast.training and not any(p.requires_grad for p in fast.parameters())
    assert type(fast) is type(model)
    model.eval()
    return model, fast, torch.randn(2, model.in_chans, size, size)  # not optimize's input


@pytest.mark.parametrize("name", CPU)
def test_every_cpu_variant_keeps_its_outputs_or_is_refused(name):
    # every linear layer through oneDNN, so that path is checked on every variant too
    got = _optimize_variant(name, REFUSED, onednn_linear=True)
    if got is not None:
        model, fast, x = got
        with torch.no_grad():
            _close(fast(x), model(x))


def test_folds_and_fuses_what_it_should():
    resnet = optimize(create_model("resnet_pico"), onednn_linear=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in resnet.modules())
    assert resnet.optimize_report["steps"] == ["fold_bn", "channels_last"]
    mobileone = optimize(create_model("mobileone_pico"), onednn_linear=False)
    assert "reparameterize" in mobileone.optimize_report["steps"]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in mobileone.modules())
    # one patch-embedding conv: no channels_last
    vit = optimize(create_model("vit_pico"), onednn_linear=False)
    assert vit.optimize_report["steps"] == []
    assert FP32_TOLERANCE == (RTOL, ATOL)


@pytest.mark.parametrize(
    "extra, phrase",
    [("reads_weight", "fold_bn changes its outputs"), ("noisy", "changes its outputs")],
)
def test_refuses_models_whose_outputs_change(extra, phrase):
    with pytest.raises(ValueError, match=phrase):
        optimize(ConvBN(extra), example_input=torch.randn(2, 3, 8, 8))


def test_refusal_names_the_step_that_fails():
    class NeedsBN(ConvBN):
        def forward(self, x):  # reads the BatchNorm's statistics outside its call
            return super().forward(x) + self.bn1.running_mean.sum()

    with pytest.raises(ValueError, match=r"fails after fold_bn.*switched off"):
        optimize(NeedsBN(), example_input=torch.randn(2, 3, 8, 8))
    fast = optimize(NeedsBN(), fold_bn=False, example_input=torch.randn(2, 3, 8, 8))
    assert isinstance(fast.bn1, nn.BatchNorm2d)


def test_bad_input():
    model = ConvBN()
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="dtype must be None, 'fp32' or 'bf16'"):
        optimize(model, dtype="fp16", example_input=x)
    with pytest.raises(TypeError, match="fold_bn must be True or False"):
        optimize(model, fold_bn="yes", example_input=x)
    with pytest.raises(TypeError, match="needs a torch.nn.Module"):
        optimize("resnet_pico")
    with pytest.raises(ValueError, match="needs example_input"):
        optimize(model)
    with pytest.raises(ValueError, match="NaN or inf"):
        optimize(model, example_input=torch.full((2, 3, 8, 8), float("nan")))
    with pytest.raises(ValueError, match="could not run the model"):
        optimize(model, example_input=torch.randn(2, 5, 8, 8))
    with torch.device("meta"):
        meta = create_model("resnet_pico")
    with pytest.raises(ValueError, match="meta device"):
        optimize(meta)


def test_bf16_refused_without_native_support_and_within_tolerance_with_it(monkeypatch):
    model = create_model("resnet_pico")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    with pytest.raises(ValueError, match="no native bfloat16"):
        optimize(model, dtype="bf16")
    # with native support (forced here; bf16 is emulated, slowly, on CPUs without it)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    fast = optimize(model, dtype="bf16")
    assert all(p.dtype == torch.bfloat16 for p in fast.parameters())
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        out, ref = fast(x), model(x)
    assert out.dtype == torch.float32
    _close(out, ref, 5e-2, 1e-3)  # the stated bf16 tolerance
    assert not torch.equal(out, ref)  # it really ran in bf16


def test_compile_in_place_keeps_outputs():
    seq = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten())
    _random_bn(seq[1], 3)
    x = torch.randn(2, 3, 6, 6)
    fast = optimize(seq, compile=True, example_input=x)
    assert isinstance(fast, nn.Sequential) and fast.optimize_report["steps"][-1] == "compile"
    with torch.no_grad():
        _close(fast(x), seq.eval()(x))


def test_compile_with_packed_linear_layers():
    # oneDNN-packed linear layers under torch.compile: the compiler gets the plain layer
    # (a packed weight as a graph input fails Inductor's lowering of the oneDNN kernel)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.GELU(), nn.Linear(16, 5)).eval()
    x = torch.randn(4, 3, 2, 2)
    fast = optimize(model, onednn_linear=True, compile=True, example_input=x)
    assert fast.optimize_report["steps"] == ["onednn_linear", "compile"]
    assert {type(m) for m in fast.modules() if isinstance(m, nn.Linear)} == {PackedLinear}
    with torch.no_grad():
        _close(fast(x), model(x))
        _close(fast(x + 1), model(x + 1))


def test_outputs_match_rule():
    ref = torch.tensor([1.0, -2.0])  # allowed: 1e-4 + 1e-4 * 2 = 3e-4
    assert outputs_match(ref + torch.tensor([0.0, 2.9e-4]), ref, 1e-4, 1e-4)[0]
    assert not outputs_match(ref + torch.tensor([0.0, 3.1e-4]), ref, 1e-4, 1e-4)[0]
    nan = outputs_match(torch.tensor([1.0, float("nan")]), ref, 1e-4, 1e-4)
    assert nan[0] is False and nan[1] == float("inf")  # reported as an infinite difference
    assert not outputs_match(ref[:1], ref, 1e-4, 1e-4)[0]
    assert not outputs_match((ref, ref), (ref, ref * 2), 1e-4, 1e-4)[0]


def test_exported_from_package():
    assert archbench.optimize is optimize


def test_bench_optimized_reports_both(capsys):
    records = bench_models(
        ["resnet_pico"], None, 4, repeats=2, throughput_seconds=0.05, optimized=True
    )
    (rec,) = records
    opt = rec["optimized"]
    assert opt["steps"] == ["fold_bn", "channels_last"]
    assert opt["latency"]["batch"] == rec["latency"]["batch"] == 1
    assert opt["throughput_detail"]["batch"] == rec["throughput_detail"]["batch"] == 4
    assert opt["throughput_speedup"] == pytest.approx(opt["throughput"] / rec["throughput"])
    print_bench_table(records, 4)
    header = capsys.readouterr().out.splitlines()[0]
    assert "latency b1 (ms)" in header and "optimized img/s" in header
    (rec8,) = bench_models(
        ["vit_pico"], None, 4, repeats=2, throughput_seconds=0.05, optimized=True, int8=True
    )
    assert rec8["optimized"]["steps"] == ["int8_linear"]
    assert rec8["optimized"]["tolerance"] == {"rtol": INT8_RTOL, "atol": INT8_ATOL}


def _linears(model: nn.Module) -> dict[str, type]:
    return {n: type(m) for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def test_onednn_linear_packs_every_linear_and_fuses_mlp_gelu():
    torch.manual_seed(0)
    model = create_model("vit_pico").eval()
    fast = optimize(model, onednn_linear=True)
    assert fast.optimize_report["steps"] == ["onednn_linear"]
    assert set(_linears(fast).values()) == {PackedLinear}
    assert set(_linears(fast)) == set(_linears(model))
    for blk in fast.blocks:  # GELU moved into fc1's kernel
        assert blk.mlp.fc1.act == "gelu" and isinstance(blk.mlp.act, nn.Identity)
        assert blk.attn.qkv.act == "none"
    assert fast.state_dict().keys() == model.state_dict().keys()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        _close(fast(x), model(x))


def test_onednn_linear_auto_packs_only_layers_timed_faster(monkeypatch):
    opt_mod = sys.modules["archbench.optimize"]  # the package exports the function by that name

    timed = []

    def fake_speedup(linear, act, shape, rounds=7):
        timed.append((linear.in_features, linear.out_features, act, shape))
        return 1.5 if act == "gelu" else 1.04  # 1.04: below the 5% margin

    monkeypatch.setattr(opt_mod, "_linear_speedup", fake_speedup)
    model = create_model("vit_pico")
    fast = optimize(model, example_input=torch.randn(4, 3, 32, 32))
    packed = {n for n, t in _linears(fast).items() if t is PackedLinear}
    assert packed == {f"blocks.{i}.mlp.fc1" for i in range(len(fast.blocks))}
    # each distinct layer shape timed once, on the rows example_input gives it
    assert len(timed) == len(set(timed)) == 5
    assert (128, 256, "gelu", (4, 65, 128)) in timed
    report = fast.optimize_report["onednn_linear"]
    assert sorted(report["packed"]) == sorted(packed) and len(report["timed"]) == 5
    monkeypatch.setattr(opt_mod, "_linear_speedup", lambda *a, **k: 1.0)
    assert optimize(model).optimize_report["steps"] == []


def test_onednn_linear_refused_or_skipped_where_unavailable(monkeypatch):
    opt_mod = sys.modules["archbench.optimize"]  # the package exports the function by that name

    model = create_model("vit_pico")
    monkeypatch.setattr(opt_mod, "onednn_linear_available", lambda: (False, "no oneDNN here"))
    with pytest.raises(ValueError, match="onednn_linear=True refused: no oneDNN here"):
        optimize(model, onednn_linear=True)
    fast = optimize(model)  # "auto" leaves the layers alone and says why
    assert fast.optimize_report["onednn_linear"] == {"skipped": "no oneDNN here"}
    assert set(_linears(fast).values()) == {nn.Linear}
    with pytest.raises(ValueError, match="onednn_linear must be"):
        optimize(model, onednn_linear="yes")


# The stated int8 tolerance, written out: |opt - ref| <= 1e-3 + 0.1 * max|ref|.
INT8_RTOL, INT8_ATOL = 0.1, 1e-3


@pytest.mark.parametrize("name", CPU)
def test_every_cpu_variant_int8_linear_within_its_tolerance_or_refused(name):
    got = _optimize_variant(name, INT8_REFUSED, int8_linear=True)
    if got is not None:
        model, fast, x = got
        called = fast.optimize_report.get("int8_linear", [])
        assert all(isinstance(fast.get_submodule(n), DynamicInt8Linear) for n in called)
        with torch.no_grad():
            _close(fast(x), model(x), INT8_RTOL, INT8_ATOL)


def test_int8_linear_quantizes_the_data_linears_and_states_its_tolerance():
    torch.manual_seed(0)
    model = create_model("vit_pico").eval()
    fast = optimize(model, int8_linear=True)
    report = fast.optimize_report
    assert report["steps"] == ["int8_linear"] and "onednn_linear" not in report
    assert report["tolerance"] == {"rtol": INT8_RTOL, "atol": INT8_ATOL}
    assert set(report["int8_linear"]) == set(_linears(model))
    assert set(_linears(fast).values()) == set()  # no float linear left
    assert all(isinstance(fast.get_submodule(n), DynamicInt8Linear) for n in _linears(model))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(fast(x), model(x), rtol=0, atol=1e-5)  # int8 did run


def test_int8_linear_skips_layers_whose_input_does_not_depend_on_the_image():
    class PositionalBias(nn.Module):
        def __init__(self):
            super().__init__()
            self.table = nn.Linear(2, 8)  # on a constant coordinate table
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            coords = torch.linspace(-1, 1, 16).view(8, 2)
            return self.fc(x.flatten(1)[:, :8]) + self.table(coords).sum(0)

    fast = optimize(PositionalBias(), int8_linear=True, example_input=torch.randn(4, 2, 2, 2))
    assert fast.optimize_report["int8_linear"] == ["fc"]
    assert type(fast.table) is nn.Linear and isinstance(fast.fc, DynamicInt8Linear)


def test_int8_linear_refused_beyond_its_tolerance_and_in_bad_combinations(monkeypatch):
    # one large activation sets the quantization step; the small feature the output
    # depends on rounds to zero
    model = nn.Sequential(nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.0, 1.0]]))
        model[0].bias.zero_()
    x = torch.tensor([[500.0, 0.3], [-500.0, 0.4]])
    with pytest.raises(ValueError, match="int8_linear changes its outputs"):
        optimize(model, int8_linear=True, example_input=x)
    vit = create_model("vit_pico")
    with pytest.raises(ValueError, match="pass onednn_linear=False"):
        optimize(vit, int8_linear=True, onednn_linear=True)
    with pytest.raises(TypeError, match="int8_linear must be True or False"):
        optimize(vit, int8_linear="yes")
    opt_mod = sys.modules["archbench.optimize"]
    monkeypatch.setattr(opt_mod, "bf16_supported", lambda device: (True, ""))
    with pytest.raises(ValueError, match="int8_linear=True refused: .*bf16"):
        optimize(vit, int8_linear=True, dtype="bf16")
    monkeypatch.setattr(opt_mod, "int8_linear_available", lambda: (False, "no int8 here"))
    with pytest.raises(ValueError, match="int8_linear=True refused: no int8 here"):
        optimize(vit, int8_linear=True)
