"""PVT: every stage halves the grid; position embeddings follow the input size."""

from __future__ import annotations

import torch

from archbench.models import create_model
from archbench.models.pvt import resize_pos_embed


def test_stages_halve_the_grid():
    m = create_model("pvt_pico").eval()
    x = torch.randn(1, 3, 32, 32)
    sides = []
    for stage in m.stages:
        x = stage(x)
        sides.append(x.shape[-1] if x.ndim == 4 else round((x.shape[1] - 1) ** 0.5))
    assert sides == [16, 8, 4, 2]
    assert [fi.reduction for fi in m.feature_info] == [2, 4, 8, 16]


def test_position_embeddings_sized_by_img_size_and_resized_at_run_time():
    m64 = create_model("pvt_pico", img_size=64, num_classes=3)
    assert m64.stages[0].pos_embed.shape == (1, 32 * 32, 32)
    assert m64.stages[3].pos_embed.shape == (1, 1 + 4 * 4, 192)
    m32 = create_model("pvt_pico", num_classes=3).eval()
    assert m32(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    pos = torch.randn(1, 4, 8)
    same = resize_pos_embed(pos, (2, 2), (2, 2))
    assert same is pos
    up = resize_pos_embed(torch.ones(1, 4, 8), (2, 2), (4, 4))
    assert up.shape == (1, 16, 8) and torch.allclose(up, torch.ones_like(up))
