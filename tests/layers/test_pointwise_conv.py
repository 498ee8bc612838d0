"""PointwiseConv: a 1x1 convolution that runs as a matrix multiply on channels-last input."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from archbench.layers import mlp as mlp_module
from archbench.layers.mlp import ConvMlp, PointwiseConv, matmul_preferred


def _pair(bias: bool) -> tuple[PointwiseConv, nn.Conv2d]:
    torch.manual_seed(0)
    ours = PointwiseConv(6, 5, bias=bias).double()
    ref = nn.Conv2d(6, 5, 1, bias=bias).double()
    ref.load_state_dict(ours.state_dict())  # the same parameters and names as nn.Conv2d
    return ours, ref


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("matmul", [True, False])
def test_equals_a_1x1_convolution_with_its_gradients(bias, layout, matmul, monkeypatch):
    monkeypatch.setattr(mlp_module, "_cpu_matmul_preferred", lambda: matmul)  # either kernel
    ours, ref = _pair(bias)
    x = torch.randn(3, 6, 4, 7, dtype=torch.float64)  # H != W: a wrong permute shows
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = ours(xa), ref(xb)
    assert ya.shape == yb.shape == (3, 5, 4, 7)
    torch.testing.assert_close(ya, yb, rtol=0, atol=1e-12)
    # by hand: y[b, o, h, w] = sum_c W[o, c] x[b, c, h, w] + bias[o]
    by_hand = torch.einsum("oc,bchw->bohw", ours.weight[:, :, 0, 0], x)
    if bias:
        by_hand = by_hand + ours.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(ya, by_hand, rtol=0, atol=1e-12)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=0, atol=1e-12)
    if bias:
        torch.testing.assert_close(ours.bias.grad, ref.bias.grad, rtol=0, atol=1e-12)
    assert ya.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")


@pytest.mark.parametrize(
    ("capability", "vendor"),
    [
        ("AVX2", "AuthenticAMD"),
        ("AVX512", "AuthenticAMD"),
        ("AVX512", "GenuineIntel"),
        ("AVX2", "GenuineIntel"),
        ("DEFAULT", ""),
    ],
)
def test_channels_last_input_takes_the_matrix_multiply_except_on_avx512_amd(
    capability, vendor, monkeypatch
):
    ours, _ = _pair(True)
    used = []
    real_linear, real_conv = F.linear, F.conv2d
    monkeypatch.setattr(F, "linear", lambda *a, **k: used.append("linear") or real_linear(*a, **k))
    monkeypatch.setattr(F, "conv2d", lambda *a, **k: used.append("conv") or real_conv(*a, **k))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(mlp_module, "_cpu_vendor", lambda: vendor)
    mlp_module._cpu_matmul_preferred.cache_clear()
    try:
        x = torch.randn(2, 6, 3, 3, dtype=torch.float64)
        ours(x.contiguous(memory_format=torch.channels_last))
        ours(x)
    finally:
        mlp_module._cpu_matmul_preferred.cache_clear()
    amd512 = capability == "AVX512" and vendor == "AuthenticAMD"
    assert used == ["conv" if amd512 else "linear", "conv"]
    assert matmul_preferred(torch.device("meta"))  # other devices: the matrix multiply


def test_conv_mlp_uses_it_and_keeps_conv_state_dict_names():
    mlp = ConvMlp(8, 16)
    assert isinstance(mlp.fc1, PointwiseConv) and isinstance(mlp.fc1, nn.Conv2d)
    assert mlp.state_dict()["fc1.weight"].shape == (16, 8, 1, 1)


def test_cpuinfo_field_reads_the_first_matching_line(tmp_path):
    from archbench.layers.helpers import cpuinfo_field

    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nvendor_id_extra\t: no\nvendor_id\t: AuthenticAMD\n"
        "model name\t: AMD EPYC 9R14: 96-Core\n\nprocessor\t: 1\nvendor_id\t: GenuineIntel\n"
    )
    assert cpuinfo_field("vendor_id", str(info)) == "AuthenticAMD"
    assert cpuinfo_field("model name", str(info)) == "AMD EPYC 9R14: 96-Core"
    assert cpuinfo_field("flags", str(info)) == ""
    assert cpuinfo_field("vendor_id", str(tmp_path / "missing")) == ""
