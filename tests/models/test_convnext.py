"""ConvNeXt: the block, the stage layout and the CPU variants' grids."""

import pytest
import torch
import torch.nn as nn

from archbench.models import create_model
from archbench.models.convnext import ConvNeXt, ConvNeXtBlock


def test_block_is_near_identity_at_init_because_of_layer_scale():
    block = ConvNeXtBlock(16).eval()
    assert torch.allclose(block.ls.gamma, torch.full((16,), 1e-6))
    x = torch.randn(2, 16, 6, 6)
    y = block(x)
    assert y.shape == x.shape
    assert (y - x).abs().max() < 1e-4
    # with a unit layer scale the branch is really there
    nn.init.ones_(block.ls.gamma)
    assert (block(x) - x).abs().max() > 1e-2


def test_block_branch_structure_and_widths():
    block = ConvNeXtBlock(24)
    assert block.conv_dw.groups == 24 and block.conv_dw.kernel_size == (7, 7)
    assert block.fc1.out_features == 96 and block.fc2.out_features == 24
    assert isinstance(block.act, nn.GELU)


def test_tiny_layout_and_downsampling_layers():
    with torch.device("meta"):
        m = create_model("convnext_tiny")
    assert [len(s) for s in m.stages] == [3, 3, 9, 3]
    assert [fi.num_chs for fi in m.feature_info] == [96, 192, 384, 768]
    assert [fi.reduction for fi in m.feature_info] == [4, 8, 16, 32]
    stem_conv = m.stem[0]
    assert stem_conv.kernel_size == (4, 4) and stem_conv.stride == (4, 4)
    for down in list(m.downsample)[1:]:
        norm, conv = down
        assert norm.__class__.__name__ == "LayerNorm2d"
        assert conv.kernel_size == (2, 2) and conv.stride == (2, 2)


def test_stochastic_depth_grows_linearly_to_the_rate():
    m = create_model("convnext_pico", drop_path_rate=0.4)
    rates = [
        b.drop_path.drop_prob if hasattr(b.drop_path, "drop_prob") else 0.0
        for s in m.stages
        for b in s
    ]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.4)
    assert rates == sorted(rates)


@pytest.mark.parametrize("name,last", [("convnext_pico", 2), ("convnext_nano", 2)])
def test_cpu_variants_keep_a_spatial_grid_at_32(name, last):
    m = create_model(name).eval()
    with torch.no_grad():
        feats = m.forward_features(torch.randn(1, 3, 32, 32))
    assert feats.shape[-2:] == (last, last)


def test_takes_any_size_that_reaches_the_last_stage():
    """Like timm's: the 2x2/2 downsamplers drop odd remainders, so only tiny inputs fail."""
    ConvNeXt(img_size=100)  # not a multiple of 32: fine
    with pytest.raises(ValueError, match=r"at least 32 .*nearest valid: 32"):
        ConvNeXt(img_size=24)
    m = create_model("convnext_pico").eval()
    with torch.no_grad():
        assert m(torch.randn(1, 3, 40, 40)).shape == (1, 1000)
        assert m.forward_features(torch.randn(1, 3, 33, 33)).shape[-2:] == (2, 2)
    with pytest.raises(ValueError, match="at least 16, got .*nearest working size: 16x16"):
        m(torch.randn(1, 3, 15, 15))
