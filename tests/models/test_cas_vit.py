"""CAS-ViT: the distillation head is part of the released size; stages halve the grid."""

from __future__ import annotations

import torch

from archbench.models import create_model


def test_distillation_head_averaged_and_optional():
    torch.manual_seed(0)
    m = create_model("cas_vit_pico", distillation=True, num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = m.forward_head(m.forward_features(x), pre_logits=True)
        expected = (m.head(feats) + m.dist_head(feats)) / 2
        torch.testing.assert_close(m(x), expected)
    with torch.device("meta"):
        with_dist = sum(p.numel() for p in create_model("cas_vit_xs").parameters())
        without = sum(
            p.numel() for p in create_model("cas_vit_xs", distillation=False).parameters()
        )
    assert with_dist - without == 220 * 1000 + 1000


def test_stages_halve_the_grid():
    m = create_model("cas_vit_pico").eval()
    x = m.stem(torch.randn(1, 3, 32, 32))
    sides = []
    for s in m.stages:
        x = s(x)
        sides.append(x.shape[-1])
    assert sides == [16, 8, 4, 2]
