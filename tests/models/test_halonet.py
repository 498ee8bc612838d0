"""HaloNet: the H-family scaling knobs and size handling."""

from __future__ import annotations

import torch

from archbench.models import create_model
from archbench.models._registry import get_model_card


def test_scaling_knobs_set_widths_and_depths():
    with torch.device("meta"):
        h3 = create_model("halonet_h3")
    assert [len(s) for s in h3.stages] == [3, 3, 12, 3]
    assert [f.num_chs for f in h3.feature_info] == [96, 192, 384, 768]  # rb = 1.5
    assert h3.num_features == 1024  # df
    blk = h3.stages[2][0]
    assert (blk.attn.block_size, blk.attn.halo_size, blk.attn.stride) == (10, 3, 2)
    with torch.device("meta"):
        h5 = create_model("halonet_h5")
    assert h5.stages[0][0].attn.dim_out == 160  # rv = 2.5 on base width 64


def test_pico_runs_on_sizes_that_do_not_tile_into_blocks():
    model = create_model("halonet_pico", num_classes=3).eval()
    assert [f.reduction for f in model.feature_info] == [2, 4, 8, 16]
    with torch.no_grad():
        assert model(torch.randn(1, 3, 40, 24)).shape == (1, 3)


# the paper's H0-H7 table: block b, halo h, value ratio rv, output ratio rb, stage-3
# depth l3, final width df (None: no final conv), image size, params (M)
PAPER = {
    "halonet_h0": (8, 3, 1.0, 0.5, 7, None, 256, 5.5),
    "halonet_h1": (8, 3, 1.0, 1.0, 10, None, 256, 8.1),
    "halonet_h2": (8, 3, 1.0, 1.25, 11, None, 256, 9.4),
    "halonet_h3": (10, 3, 1.0, 1.5, 12, 1024, 320, 11.8),
    "halonet_h4": (12, 2, 1.0, 3.0, 12, 1280, 384, 19.1),
    "halonet_h5": (14, 2, 2.5, 2.0, 23, 1536, 448, 30.7),
    "halonet_h6": (8, 4, 3.0, 2.75, 24, 1536, 512, 43.4),
    "halonet_h7": (10, 3, 4.0, 3.5, 26, 2048, 600, 67.4),
}


def test_every_h_variant_follows_the_papers_table():
    for name, (b, h, rv, rb, l3, df, size, params) in PAPER.items():
        with torch.device("meta"):
            m = create_model(name)
        assert [len(s) for s in m.stages] == [3, 3, l3, 3], name
        assert [f.num_chs for f in m.feature_info] == [int(w * rb) for w in (64, 128, 256, 512)]
        assert m.num_features == (df or int(512 * rb))
        for stage, base in zip(m.stages, (64, 128, 256, 512)):
            attn = stage[0].attn
            assert (attn.block_size, attn.halo_size) == (b, h), name
            assert attn.num_heads == 8 and attn.head_dim == base // 8, name
            assert attn.dim_out == int(base * rv), name
            assert attn.rel_height.shape == (2 * b + 2 * h - 1, base // 8)
        n = sum(p.numel() for p in m.parameters())
        assert abs(n / 1e6 - params) / params < 0.005, name
        assert get_model_card(name).img_size == size and get_model_card(name).params_m == params


def test_every_relative_table_entry_is_reachable_from_a_block():
    from archbench.layers.local_attention import HaloAttention

    torch.manual_seed(0)
    attn = HaloAttention(16, 16, num_heads=8, block_size=4, halo_size=2)
    assert attn.rel_height.shape[0] == 2 * 4 + 2 * 2 - 1
    attn(torch.randn(1, 16, 8, 8)).square().sum().backward()
    # every row of both tables receives gradient: none is a dead parameter
    assert (attn.rel_height.grad.abs().sum(-1) > 0).all()
    assert (attn.rel_width.grad.abs().sum(-1) > 0).all()
