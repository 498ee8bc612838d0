"""CvT: stages shrink the grid, the class token appears only in the last stage."""

from __future__ import annotations

import torch

from archbench.models import create_model


def test_stage_grids_and_class_token():
    m = create_model("cvt_pico").eval()
    x = torch.randn(1, 3, 32, 32)
    s0 = m.stages[0](x)
    s1 = m.stages[1](s0)
    s2 = m.stages[2](s1)
    assert s0.shape == (1, 32, 32, 32)
    assert s1.shape == (1, 64, 16, 16)
    assert s2.shape == (1, 1 + 8 * 8, 128)
    assert m.stages[0].cls_token is None and m.stages[2].cls_token is not None


def test_no_position_embedding_any_multiple_works():
    m = create_model("cvt_pico", num_classes=5).eval()
    assert not any("pos" in n for n, _ in m.named_parameters())
    assert m(torch.randn(1, 3, 48, 48)).shape == (1, 5)
