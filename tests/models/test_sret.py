"""SReT: recursion shares weights, position embedding resizing."""

from __future__ import annotations

import torch

from archbench.models import create_model


def test_recursion_shares_block_weights_across_depth():
    with torch.device("meta"):
        model = create_model("sret_t")
    stages = [model.stages[i] for i in (0, 2, 4)]
    assert [len(s.blocks) for s in stages] == [2, 5, 3]  # recursive_num unique blocks
    assert [len(s.projections) for s in stages] == [4, 10, 6]  # one projection per depth
    assert [s.loops for s in stages] == [2, 2, 2]


def test_recursive_pass_reuses_the_same_block():
    model = create_model("sret_pico", num_classes=3).eval()
    calls = []
    blk = model.stages[0].blocks[0]
    handle = blk.register_forward_hook(lambda m, i, o: calls.append(i[1]))
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    handle.remove()
    assert calls == [4, 2]  # groups1 on the first pass, groups2 on the recursive one


def test_pos_embed_resized_for_new_img_size():
    small = create_model("sret_pico", num_classes=3)
    big = create_model("sret_pico", num_classes=3, img_size=64)
    assert big.pos_embed.shape[-2:] == (32, 32) and small.pos_embed.shape[-2:] == (16, 16)
    big.load_pos_embed_from(small.pos_embed)
    torch.testing.assert_close(big.pos_embed.mean(), small.pos_embed.mean(), atol=1e-3, rtol=1e-2)
    const = torch.full((1, 32, 16, 16), 0.5)
    big.load_pos_embed_from(const)
    torch.testing.assert_close(big.pos_embed, torch.full_like(big.pos_embed, 0.5))
    with torch.no_grad():
        assert big.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 3)
