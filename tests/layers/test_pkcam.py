"""PKCAM against its equations written out channel by channel."""

import math

import pytest
import torch

from archbench.layers import create_attn
from archbench.models import create_model


def _sig(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def _eca(d: list[float], w: list[float]) -> list[float]:
    k, c = len(w), len(d)
    return [
        _sig(sum(w[j] * d[i + j - k // 2] for j in range(k) if 0 <= i + j - k // 2 < c))
        for i in range(c)
    ]


def _pkcam_reference(x, prev, m):
    """One example: (C, H, W) output, (C', H', W') previous layer, the module's weights."""
    c = x.shape[0]
    u = x.mean((1, 2)).tolist()
    p = prev.mean((1, 2)).tolist()
    p = [p[i % len(p)] for i in range(c)]  # tiled along channels
    wl = m.local_conv.weight.flatten().tolist()
    wg = m.global_conv.weight.flatten().tolist()
    fi = m.in_fusion.weight.flatten().tolist()
    fo = m.out_fusion.weight.flatten().tolist()
    local = _eca(u, wl)
    fused = [max(0.0, fi[0] * p[i] + fi[1] * u[i]) for i in range(c)]
    glob = _eca(fused, wg)
    s = [_sig(fo[0] * local[i] + fo[1] * glob[i]) for i in range(c)]
    return x * (1 + torch.tensor(s, dtype=x.dtype))[:, None, None]


def test_pkcam_matches_its_equations():
    torch.manual_seed(0)
    m = create_attn("pkcam", 32).double()
    assert m.local_conv.kernel_size == (3,)  # |log2 32 + 1| / 2 = 3
    x = torch.randn(2, 32, 5, 4, dtype=torch.float64)
    prev = torch.randn(2, 8, 10, 8, dtype=torch.float64)  # narrower: tiled 4 times
    with torch.no_grad():
        m.in_fusion.weight.copy_(torch.tensor([[[0.7, -0.4]]]))
        m.out_fusion.weight.copy_(torch.tensor([[[1.3, 0.6]]]))
        out = m(x, prev)
    for i in range(2):
        torch.testing.assert_close(out[i], _pkcam_reference(x[i], prev[i], m))


def test_pkcam_without_previous_is_local_eca_in_residual_form():
    m = create_attn("pkcam", 16).double()
    x = torch.randn(2, 16, 3, 3, dtype=torch.float64)
    w = m.local_conv.weight.flatten().tolist()
    with torch.no_grad():
        out = m(x)
    for i in range(2):
        s = torch.tensor(_eca(x[i].mean((1, 2)).tolist(), w), dtype=torch.float64)
        torch.testing.assert_close(out[i], x[i] * (1 + s)[:, None, None])


def test_pkcam_previous_layer_changes_the_output_and_bad_width_fails():
    m = create_attn("pkcam", 16)
    x = torch.randn(1, 16, 3, 3)
    with torch.no_grad():
        m.in_fusion.weight.fill_(1.0)
        m.out_fusion.weight.fill_(1.0)
    a = m(x, torch.randn(1, 16, 6, 6) + 3)
    b = m(x, torch.randn(1, 16, 6, 6) - 3)
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="16 channels"):
        m(torch.randn(1, 8, 3, 3))


def test_pkcam_resnet_trains():
    model = create_model("resnet_pico", num_classes=3, attn_layer="pkcam")
    out = model(torch.randn(2, 3, 32, 32))
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
