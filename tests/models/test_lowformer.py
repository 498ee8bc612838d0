"""LowFormer: lowtention is down-sampled attention with a transposed-conv output."""

from __future__ import annotations

import pytest
import torch

from archbench.layers import reference_attention
from archbench.models import create_model
from archbench.models.lowformer import Lowtention


@pytest.mark.parametrize("stride", [1, 2])
def test_lowtention_matches_reference(stride):
    torch.manual_seed(0)
    att = Lowtention(128, stride).eval()
    assert (att.num_heads, att.head_dim) == (2, 32)
    x = torch.randn(2, 128, 8, 8)
    y = att.qkv(att.down(x))
    lh, lw = y.shape[-2:]
    assert (lh, lw) == (8 // stride, 8 // stride)
    y = y.reshape(2, 2, 96, lh * lw).transpose(-2, -1)
    q, k, v = y.chunk(3, dim=-1)
    out = reference_attention(q, k, v).transpose(-2, -1).reshape(2, 64, lh, lw)
    ref = att.up(out)[:, :, :8, :8]
    torch.testing.assert_close(att(x), ref, atol=1e-5, rtol=1e-5)
    assert att(torch.randn(1, 128, 7, 9)).shape == (1, 128, 7, 9)  # odd sizes come back


def test_b1_layout():
    with torch.device("meta"):
        model = create_model("lowformer_b1")
    assert [len(s) for s in model.stages] == [1, 1, 6, 6]  # downsample + blocks
    assert [f.reduction for f in model.feature_info] == [4, 8, 16, 32]
    stage3, stage4 = model.stages[2], model.stages[3]
    assert stage3[1][0].body[1].down[0].stride == (2, 2)
    assert stage4[1][0].body[1].down[0].stride == (1, 1)
