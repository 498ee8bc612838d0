"""SKNet: the SK unit in place of the bottleneck's 3x3 convolution, at the paper's size."""

import pytest
import torch
import torch.nn.functional as F

from archbench.layers.plugin_attn import SelectiveKernel
from archbench.models import create_model


def _params(m) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name", ["sknet50", "skresnext50_32x4d"])
def test_sknet50_has_the_paper_parameter_count(name):
    with torch.device("meta"):
        model = create_model(name)
    assert abs(_params(model) / 1e6 - 27.5) / 27.5 < 0.005  # SKNet paper, Table 2


def test_sk_unit_replaces_the_3x3_conv_with_stride_and_groups():
    with torch.device("meta"):
        model = create_model("sknet50")
    blk = model.layer2[0]
    assert isinstance(blk.conv2, SelectiveKernel)
    assert isinstance(blk.bn2, torch.nn.Identity) and isinstance(blk.act2, torch.nn.Identity)
    convs = [br[0] for br in blk.conv2.branches]
    assert [c.dilation for c in convs] == [(1, 1), (2, 2)]
    assert all(c.stride == (2, 2) and c.groups == 32 and c.in_channels == 256 for c in convs)
    # d = max(C / 16, 32) at every width; the select FCs have no bias (A and B of the paper)
    assert blk.conv2.fuse[0].out_channels == 32 and blk.conv2.select.bias is None
    assert model.layer4[0].conv2.fuse[0].out_channels == 1024 // 16
    # no SK after the last 1x1 convolution
    assert isinstance(blk.attn, torch.nn.Identity)


def test_sk_unit_is_the_softmax_selection_of_its_branches():
    torch.manual_seed(0)
    sk = SelectiveKernel(8, branches=2, groups=2, min_dim=4, stride=2).eval()
    for m in sk.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 8, 6, 6)
    u1, u2 = sk.branches[0](x), sk.branches[1](x)
    s = (u1 + u2).mean((2, 3))  # global average pool of the fused sum
    bn = sk.fuse[1]
    z = F.relu(
        (s @ sk.fuse[0].weight[:, :, 0, 0].T - bn.running_mean)
        / torch.sqrt(bn.running_var + bn.eps)
        * bn.weight
        + bn.bias
    )
    w = sk.select.weight[:, :, 0, 0]
    la, lb = z @ w[:8].T, z @ w[8:].T  # A z and B z
    a = torch.exp(la) / (torch.exp(la) + torch.exp(lb))
    ref = a[..., None, None] * u1 + (1 - a)[..., None, None] * u2
    torch.testing.assert_close(sk(x), ref, rtol=1e-5, atol=1e-5)
    assert sk(x).shape == (2, 8, 3, 3)


def test_sk_groups_follow_the_cardinality():
    model = create_model("resnext_pico", conv_layer="sk")  # cardinality 8
    sks = [m for m in model.modules() if isinstance(m, SelectiveKernel)]
    assert len(sks) == 4
    assert all(br[0].groups == 8 for sk in sks for br in sk.branches)


def test_resnet_refuses_sk_as_attention_and_on_basic_blocks():
    with pytest.raises(ValueError, match="conv_layer='sk'"):
        create_model("resnet_pico", attn_layer="sk")
    with pytest.raises(ValueError, match="bottleneck"):
        create_model("resnet_pico", conv_layer="sk")


def test_sknet_pico_trains_a_step():
    model = create_model("sknet_pico", num_classes=5)
    out = model(torch.randn(2, 3, 32, 32))
    out.sum().backward()
    assert out.shape == (2, 5)
    assert all(p.grad is not None for p in model.parameters())
