"""MobileOne: branch structure, fusion equivalence, fused parameter counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from archbench.models import create_model, get_model_card
from archbench.models.mobileone import MobileOneBlock


def _randomize_bn(model: nn.Module) -> None:
    """Give every BN non-trivial statistics so that fusion is really exercised."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)


@pytest.mark.parametrize(
    "cin,cout,k,stride,groups,branches,se",
    [
        (8, 8, 3, 1, 8, 4, False),  # depthwise unit with skip, scale and 4 branches
        (8, 8, 3, 2, 8, 1, False),  # strided depthwise unit: no skip
        (8, 16, 1, 1, 1, 2, True),  # pointwise unit with SE (S4)
        (8, 8, 1, 1, 1, 1, False),  # pointwise unit with skip
        (3, 8, 3, 2, 1, 1, False),  # stem
    ],
)
def test_block_fusion_same_output(cin, cout, k, stride, groups, branches, se):
    torch.manual_seed(0)
    block = MobileOneBlock(cin, cout, k, stride, groups, branches, se)
    assert len(block.rbr_conv) == branches
    assert (block.rbr_skip is not None) == (cin == cout and stride == 1)
    assert (block.rbr_scale is not None) == (k > 1)
    _randomize_bn(block)
    block.eval()
    x = torch.randn(2, cin, 9, 9)
    ref = block(x)
    block.reparameterize()
    assert not hasattr(block, "rbr_conv")
    assert block.reparam_conv.kernel_size == (k, k)
    assert torch.allclose(block(x), ref, atol=1e-5)


def test_pico_model_reparameterize_same_output():
    torch.manual_seed(0)
    model = create_model("mobileone_pico", num_classes=10)
    _randomize_bn(model)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        n_before = sum(p.numel() for p in model.parameters())
        model.reparameterize()
        out = model(x)
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert sum(p.numel() for p in model.parameters()) < n_before


@pytest.mark.parametrize("name", [f"mobileone_s{i}" for i in range(5)])
def test_fused_params_match_paper(name):
    """The paper's table counts the inference model (reported to one decimal)."""
    fused_paper = get_model_card(name).extra["params_m_fused"]
    with torch.device("meta"):
        model = create_model(name, inference_mode=True)
    fused = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(fused - fused_paper) <= 0.05, (name, fused, fused_paper)


def test_s4_has_se_in_last_blocks_only():
    with torch.device("meta"):
        model = create_model("mobileone_s4")
    se_stage3 = [not isinstance(b.se, nn.Identity) for b in model.stage3]
    assert se_stage3 == [False] * 10 + [True] * 10  # last 5 blocks, 2 units each
    assert all(not isinstance(b.se, nn.Identity) for b in model.stage4)
    assert all(isinstance(b.se, nn.Identity) for b in model.stage2)


def test_s0_uses_four_branches():
    with torch.device("meta"):
        model = create_model("mobileone_s0")
    assert len(model.stage1[0].rbr_conv) == 4
    assert len(model.stage0.rbr_conv) == 1


def test_bad_arguments():
    with pytest.raises(ValueError, match="se_blocks"):
        create_model("mobileone_pico", se_blocks=(0, 0, 3, 2))
    with pytest.raises(ValueError, match="stem_stride"):
        create_model("mobileone_pico", stem_stride=4)
