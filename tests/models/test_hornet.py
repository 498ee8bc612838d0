"""HorNet: g^n Conv follows the recursive gating formula; orders per stage."""

from __future__ import annotations

import pytest
import torch

from archbench.models import create_model
from archbench.models.hornet import GnConv


def test_gnconv_matches_the_recursion():
    torch.manual_seed(0)
    m = GnConv(16, order=3, scale=0.5).eval()
    assert m.dims == [4, 8, 16]
    x = torch.randn(2, 16, 6, 6)
    proj = m.proj_in(x)
    p0, q = proj[:, :4], proj[:, 4:]
    dq = m.dwconv(q) * 0.5
    q0, q1, q2 = dq[:, :4], dq[:, 4:12], dq[:, 12:]
    p1 = p0 * q0
    p2 = m.pws[0](p1) * q1
    p3 = m.pws[1](p2) * q2
    assert torch.allclose(m(x), m.proj_out(p3), atol=1e-6)


def test_gnconv_order_one_is_a_single_gate():
    m = GnConv(8, order=1).eval()
    x = torch.randn(1, 8, 5, 5)
    proj = m.proj_in(x)
    expected = m.proj_out(proj[:, :8] * m.dwconv(proj[:, 8:]))
    assert torch.allclose(m(x), expected, atol=1e-6)


def test_gnconv_rejects_indivisible_width():
    with pytest.raises(ValueError, match="divisible"):
        GnConv(12, order=4)


def test_stage_orders_grow_two_to_five():
    with torch.device("meta"):
        model = create_model("hornet_tiny_7x7")
    orders = [stage[-1].gnconv.order for stage in model.stages]
    assert orders == [2, 3, 4, 5]
    assert abs(model.stages[0][0].gnconv.scale - 1 / 3) < 1e-9
