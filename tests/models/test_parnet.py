"""ParNet: block fusion equivalence, stream layout and the paper's fused counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from archbench.models import create_model, get_model_card
from archbench.models.parnet import RepSSEBlock, _Fusion


def _randomize_bn(module: nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)


@pytest.mark.parametrize(
    "cin,cout,stride,groups",
    [(8, 8, 1, 1), (8, 16, 2, 1), (16, 8, 2, 2), (16, 8, 1, 2), (3, 8, 1, 1)],
)
def test_block_fusion_same_output(cin, cout, stride, groups):
    torch.manual_seed(0)
    block = RepSSEBlock(cin, cout, stride, groups)
    assert (block.skip is not None) == (cin == cout and stride == 1)
    _randomize_bn(block)
    block.eval()
    x = torch.randn(2, cin, 12, 12)
    ref = block(x)
    block.reparameterize()
    assert not hasattr(block, "pointwise") and block.dense.bias is not None
    assert torch.allclose(block(x), ref, atol=1e-5)


def test_sse_gates_only_the_skip_branch():
    """With the conv branches zeroed, a same-shape block is SiLU(BN(x) * sigmoid(W gap(BN(x))))."""
    block = RepSSEBlock(4, 4).eval()
    with torch.no_grad():
        block.dense.bn.weight.zero_()
        block.pointwise.bn.weight.zero_()
    x = torch.randn(1, 4, 5, 5)
    s = block.skip(x)
    gate = torch.sigmoid(block.se(s.mean((2, 3), keepdim=True)))
    assert torch.allclose(block(x), nn.functional.silu(s * gate), atol=1e-6)


def test_fusion_interleaves_inputs():
    fusion = _Fusion(3, 6, 1).eval()
    seen = {}
    fusion.block.register_forward_pre_hook(lambda _m, args: seen.setdefault("x", args[0]))
    a, b = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    fusion(a, b)
    x = seen["x"]
    assert torch.allclose(x[:, 0::2], fusion.bn_a(a)) and torch.allclose(x[:, 1::2], fusion.bn_b(b))


def test_pico_reparameterize_same_output():
    torch.manual_seed(0)
    model = create_model("parnet_pico", num_classes=10)
    _randomize_bn(model)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        model.reparameterize()
        out = model(x)
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["parnet_m", "parnet_l", "parnet_xl"])
def test_fused_params_match_paper(name):
    with torch.device("meta"):
        model = create_model(name)
        model.reparameterize()
    fused = sum(p.numel() for p in model.parameters()) / 1e6
    paper = get_model_card(name).extra["params_m_fused"]
    assert abs(fused / paper - 1) <= 0.005, (name, fused, paper)


def test_stream_depths_follow_the_paper():
    with torch.device("meta"):
        model = create_model("parnet_m")
    # 5, 6, 6 blocks per stream counting the init block that feeds it
    assert [len(s) for s in model.streams] == [4, 5, 5]
    assert model.fuse1.block.groups == 2 and model.fuse2.block.stride == 1


def test_bad_arguments():
    with pytest.raises(ValueError, match="stem_stride"):
        create_model("parnet_pico", stem_stride=3)
    with pytest.raises(ValueError, match="widths"):
        create_model("parnet_pico", widths=(8, 16, 32))
