"""MOAT: MBConv stages then MOAT blocks (MBConv before attention, MBConv downsamples)."""

from __future__ import annotations

import torch

from archbench.models import create_model
from archbench.models.moat import MBConv, MOATBlock, SqueezeExcite


def test_stage_layout_and_downsampling_inside_mbconv():
    m = create_model("moat_pico").eval()
    kinds = [type(b).__name__ for s in m.stages for b in s]
    assert kinds == ["MBConv", "MBConv", "MBConv", "MOATBlock", "MOATBlock", "MOATBlock"]
    blk = m.stages[2][0]
    assert blk.mbconv.dw.stride == (2, 2)
    seen = {}
    blk.attn.register_forward_hook(lambda _m, i, o: seen.__setitem__("in", i[0].shape))
    blk(torch.randn(1, 64, 8, 8))
    assert seen["in"] == (1, 4, 4, 128)  # attention runs on the downsampled grid
    assert isinstance(m.stages[0][0].se, SqueezeExcite)  # MBConv stages keep SE
    assert isinstance(blk.mbconv.se, torch.nn.Identity)  # MOAT's MBConv has none


def test_relative_tables_sized_for_canonical_grid_and_resized():
    with torch.device("meta"):
        m = create_model("moat_0")
    assert m.stages[2][0].attn.rel_table.shape == (12, 27, 27)  # 14x14 grid at 224
    assert m.stages[3][0].attn.rel_table.shape == (24, 13, 13)  # 7x7 grid
    small = create_model("moat_pico", num_classes=3).eval()
    assert small(torch.randn(1, 3, 64, 64)).shape == (1, 3)


def test_mbconv_shortcut_identity_when_shapes_match():
    b = MBConv(16, 16, 1, 4, True, 0.0)
    assert len(b.shortcut) == 0
    assert isinstance(MOATBlock(16, 32, 2, 4, 16, 4, 0.0).mbconv.shortcut[0], torch.nn.AvgPool2d)
