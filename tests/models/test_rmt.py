"""RMT: decomposed attention in the early stages, whole-grid attention later; grids halve."""

from __future__ import annotations

import torch

from archbench.models import create_model


def test_stage_layout():
    m = create_model("rmt_pico").eval()
    flags = [b.attn.decomposed for s in m.stages for b in s.blocks]
    assert flags == [True, True, False, False, False]
    x = m.stem(torch.randn(1, 3, 32, 32))
    sides = []
    for s in m.stages:
        x = s(x)
        sides.append(x.shape[-1])
    assert sides == [16, 8, 4, 2]


def test_decay_is_fixed_per_head_and_not_learnt():
    with torch.device("meta"):
        m = create_model("rmt_small")
    attn = m.stages[2].blocks[0].attn
    assert attn.decomposed and not m.stages[3].blocks[0].attn.decomposed
    assert "log_gamma" not in dict(m.named_parameters())
    lg = create_model("rmt_pico").stages[0].blocks[0].attn.log_gamma
    assert (lg < 0).all() and lg[0] < lg[1]  # later heads decay more slowly
