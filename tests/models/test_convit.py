"""ConViT: the class token joins after the GPSA blocks; position embeddings follow img_size."""

from __future__ import annotations

import torch

from archbench.models import create_model


def test_class_token_joins_after_local_layers():
    m = create_model("convit_pico").eval()
    lengths = []
    for blk in m.blocks:
        blk.register_forward_hook(lambda _m, _i, out: lengths.append(out.shape[1]))
    m(torch.randn(1, 3, 32, 32))
    assert lengths == [64] * 4 + [65] * 2
    assert sum(b.gpsa for b in m.blocks) == 4


def test_position_embedding_sized_and_resized():
    m = create_model("convit_pico", img_size=64, num_classes=3)
    assert m.pos_embed.shape == (1, 16 * 16, 96)
    small = create_model("convit_pico", num_classes=3).eval()
    assert small(torch.randn(1, 3, 48, 48)).shape == (1, 3)
