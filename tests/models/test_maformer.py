"""MAFormer: the MAF block's local and global streams and their fusion."""

from __future__ import annotations

import pytest
import torch

from archbench.models import create_model
from archbench.models.maformer import MAFAttention


def test_without_fusion_maf_is_local_window_attention():
    torch.manual_seed(0)
    maf = MAFAttention(16, 2, grid=(4, 4), window_size=2, down_ratio=2).eval()
    with torch.no_grad():
        maf.fuse_proj.weight.zero_()
        maf.fuse_proj.bias.zero_()
    x = torch.randn(2, 16, 16)
    torch.testing.assert_close(maf(x, (4, 4)), maf.local(x, (4, 4)))


def test_global_stream_carries_information_across_windows():
    torch.manual_seed(0)
    maf = MAFAttention(16, 2, grid=(4, 4), window_size=2, down_ratio=2).eval()
    assert maf.gld.out_features == 4  # 16 tokens summarised by 2 x 2 global tokens
    x = torch.randn(1, 16, 16)
    y = x.clone()
    y[0, 15] += 3.0  # a token in the bottom-right window
    out_x, out_y = maf(x, (4, 4)), maf(y, (4, 4))
    assert not torch.allclose(out_x[0, 0], out_y[0, 0])  # top-left token still sees it
    local_x, local_y = maf.local(x, (4, 4)), maf.local(y, (4, 4))
    torch.testing.assert_close(local_x[0, 0], local_y[0, 0])  # the local stream does not
    with pytest.raises(ValueError, match="grid"):
        maf(torch.randn(1, 9, 16), (3, 3))


def test_pico_pyramid_halves_the_grid():
    model = create_model("maformer_pico", num_classes=3)
    assert [f.reduction for f in model.feature_info] == [2, 4, 8, 16]
    with pytest.raises(ValueError, match="img_size"):
        model(torch.randn(1, 3, 64, 64))
