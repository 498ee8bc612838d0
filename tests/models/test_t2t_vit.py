"""T2T-ViT: soft splits shorten the sequence; the sinusoid table follows the token count."""

from __future__ import annotations

import torch

from archbench.models import create_model
from archbench.models.t2t_vit import sinusoid_table


def test_soft_splits_reduce_grid_and_table_follows_img_size():
    m32 = create_model("t2t_vit_pico", num_classes=3)
    m64 = create_model("t2t_vit_pico", num_classes=3, img_size=64)
    assert m32.tokens_to_token.grid((32, 32)) == (8, 8)
    assert m64.pos_embed.shape == (1, 16 * 16 + 1, 96)
    assert m32.pos_embed.shape == (1, 8 * 8 + 1, 96)
    tokens = m64.eval().forward_features(torch.randn(1, 3, 64, 64))
    assert tokens.shape == (1, 257, 96)


def test_sinusoid_table_values():
    t = sinusoid_table(5, 4)[0]
    assert torch.allclose(t[:, 0], torch.sin(torch.arange(5.0)))
    assert torch.allclose(t[:, 1], torch.cos(torch.arange(5.0)))
    assert torch.allclose(t[:, 2], torch.sin(torch.arange(5.0) / 100.0))


def test_canonical_t2t_module_shapes():
    with torch.device("meta"):
        m = create_model("t2t_vit_t_14")
        out = m.tokens_to_token(torch.empty(1, 3, 224, 224))
    assert out.shape == (1, 196, 384)
    assert m.pos_embed.shape == (1, 197, 384)
