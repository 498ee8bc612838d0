"""CrossViT: the fusion only touches CLS tokens; published counts exclude position embeddings."""

from __future__ import annotations

import pytest
import torch

from archbench.models import create_model


@pytest.mark.parametrize(
    ("name", "paper_m"), [("crossvit_tiny_240", 6.9), ("crossvit_small_240", 26.7)]
)
def test_paper_count_is_total_without_position_embeddings(name, paper_m):
    with torch.device("meta"):
        m = create_model(name)
    total = sum(p.numel() for p in m.parameters())
    pos = sum(p.numel() for p in m.pos_embed)
    assert abs((total - pos) / 1e6 - paper_m) < 0.05


def test_fusion_changes_only_cls_tokens():
    torch.manual_seed(0)
    m = create_model("crossvit_pico").eval()
    block = m.blocks[0]
    xs = [torch.randn(2, 65, 48), torch.randn(2, 17, 96)]
    branch_out = [b(x) for b, x in zip(block.branches, xs)]
    fused = block(xs)
    for b in range(2):
        assert torch.allclose(fused[b][:, 1:], branch_out[b][:, 1:])
        assert not torch.allclose(fused[b][:, :1], branch_out[b][:, :1])
    # the small branch's CLS depends on the large branch's patch tokens
    xs2 = [xs[0], xs[1].clone()]
    xs2[1][:, 1:] += 1.0
    assert not torch.allclose(block(xs2)[0][:, 0], fused[0][:, 0])


def test_branch_grids_and_resize():
    m = create_model("crossvit_pico")
    assert [pe.grid_size for pe in m.patch_embed] == [(8, 8), (4, 4)]
    with torch.device("meta"):
        big = create_model("crossvit_small_240")
    assert big.branch_sizes == [240, 224]
    assert [p.shape[1] for p in big.pos_embed] == [401, 197]
