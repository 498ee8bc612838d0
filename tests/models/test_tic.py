"""TiC: MSA-Conv blocks accept any input size (no position embedding)."""

from __future__ import annotations

import torch

from archbench.layers.local_attention import MSAConv2d
from archbench.models import create_model


def test_tic_runs_at_other_resolutions_without_resizing_anything():
    model = create_model("tic_pico", num_classes=4).eval()
    with torch.no_grad():
        for size in (32, 48, 40):
            assert model(torch.randn(1, 3, size, size)).shape == (1, 4)
    assert not any("pos" in n for n, _ in model.named_parameters())


def test_stages_downsample_with_strided_msa_conv():
    model = create_model("tic_pico")
    downs = [m for m in model.modules() if isinstance(m, MSAConv2d) and m.conv.stride == (2, 2)]
    assert len(downs) == 2
    assert [f.reduction for f in model.feature_info] == [2, 4, 8]
    blocks = [m for m in model.modules() if isinstance(m, MSAConv2d) and m.conv.stride == (1, 1)]
    assert all(b.shift > 0 and b.inter_pool for b in blocks)
