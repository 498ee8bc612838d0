"""HaloNet: the H-family scaling knobs and size handling."""

from __future__ import annotations

import torch

from archbench.models import create_model


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
