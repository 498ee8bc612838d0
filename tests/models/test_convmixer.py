"""ConvMixer: the block's residual structure and the single-resolution layout."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from archbench.models import create_model
from archbench.models.convmixer import ConvMixerBlock


def test_block_is_residual_dwconv_then_pointwise():
    torch.manual_seed(0)
    block = ConvMixerBlock(8, 5).eval()
    x = torch.randn(2, 8, 9, 9)
    mid = x + block.norm1(nn.functional.gelu(block.dwconv(x)))
    expected = block.norm2(nn.functional.gelu(block.pwconv(mid)))
    assert torch.allclose(block(x), expected, atol=1e-6)
    assert block.dwconv.groups == 8 and block.dwconv.kernel_size == (5, 5)


def test_resolution_is_kept_after_the_patch_stem():
    model = create_model("convmixer_pico").eval()
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, 32, 32))
    assert feats.shape == (1, 128, 16, 16)


def test_768_32_uses_relu_and_1536_20_gelu():
    with torch.device("meta"):
        a = create_model("convmixer_768_32")
        b = create_model("convmixer_1536_20")
    assert isinstance(a.blocks[0].act1, nn.ReLU) and isinstance(b.blocks[0].act1, nn.GELU)
    assert len(a.blocks) == 32 and b.blocks[0].dwconv.kernel_size == (9, 9)


def test_bad_arguments():
    with pytest.raises(ValueError, match="positive"):
        create_model("convmixer_pico", depth=0)
    model = create_model("convmixer_pico").eval()
    with torch.no_grad():  # the 2x2 patchify stem drops the odd row and column, as timm's
        assert model.forward_features(torch.randn(1, 3, 31, 31)).shape[-2:] == (15, 15)
    with pytest.raises(ValueError, match="at least 2"):
        model(torch.randn(1, 3, 1, 1))
