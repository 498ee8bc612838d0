"""Plug-in modules: shapes, parameter counts the papers state, and reductions to known ops."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from archbench.layers import create_attn, create_mixer
from archbench.layers.conv_variants import (
    AdaptiveRotatedConv2d,
    BatchChannelNorm,
    CondConv2d,
    IBNorm,
    LaurelResidual,
    SPDConv,
    WSConv2d,
    rotate_kernels,
    space_to_depth,
)
from archbench.models import create_model

ATTN = ["se", "eca", "cbam", "gc", "triplet", "ulsam", "sk", "pkcam", "lkca"]


@pytest.mark.parametrize("name", ATTN)
@pytest.mark.parametrize("hw", [(7, 7), (8, 6)])
def test_attention_plugins_keep_shape(name, hw):
    m = create_attn(name, 64).eval()
    x = torch.randn(2, 64, *hw)
    assert m(x).shape == x.shape


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_triplet_attention_parameter_count_is_width_independent():
    # three branches of a 2->1 7x7 conv (98) plus a one-channel BN (2)
    assert _params(create_attn("triplet", 64)) == _params(create_attn("triplet", 1024)) == 300


def test_cbam_resnet50_matches_paper_count():
    with torch.device("meta"):
        model = create_model("resnet50", attn_layer="cbam")
    assert abs(_params(model) / 1e6 - 28.09) / 28.09 < 0.005  # CBAM paper, Table 1


def test_pkcam_and_eca_are_tiny():
    # local and global ECA kernels of 5 plus the two kernel-2 fusions
    assert _params(create_attn("pkcam", 256)) == 2 * 5 + 2 * 2
    assert _params(create_attn("eca", 256)) == 5


def test_gc_block_starts_as_identity_and_context_is_softmax_pooling():
    gc = create_attn("gc", 16)
    x = torch.randn(2, 16, 5, 5)
    torch.testing.assert_close(gc(x), x)
    nn.init.zeros_(gc.attn_logits.weight)
    nn.init.zeros_(gc.attn_logits.bias)
    # uniform attention logits: the context is the spatial mean
    torch.testing.assert_close(gc.context(x), x.mean((2, 3), keepdim=True))


def test_cbam_gates_are_between_zero_and_one():
    m = create_attn("cbam", 32)
    x = torch.rand(2, 32, 6, 6) + 0.1
    y = m(x)
    assert (y >= 0).all() and (y <= x + 1e-6).all()


def test_pkcam_uses_the_previous_layer():
    m = create_attn("pkcam", 32)
    x = torch.randn(2, 32, 4, 4)
    assert not torch.allclose(m(x, torch.randn(2, 16, 8, 8)), m(x, torch.randn(2, 16, 8, 8)))


def test_lkca_is_also_a_token_mixer():
    mixer = create_mixer("lkca", 16, kernel_size=9)
    assert mixer(torch.randn(1, 16, 8, 8)).shape == (1, 16, 8, 8)
    with pytest.raises(ValueError, match="odd"):
        create_attn("lkca", 16, kernel_size=8)


def test_weight_standardization():
    conv = WSConv2d(4, 6, 3, padding=1)
    w = conv.standardized_weight()
    torch.testing.assert_close(w.mean((1, 2, 3)), torch.zeros(6), atol=1e-5, rtol=0)
    raw_var = conv.weight.var((1, 2, 3), unbiased=False)
    torch.testing.assert_close(w.var((1, 2, 3), unbiased=False), raw_var / (raw_var + conv.eps))
    x = torch.randn(1, 4, 5, 5)
    torch.testing.assert_close(conv(x), F.conv2d(x, w, conv.bias, padding=1))


def test_batch_channel_norm_normalizes_groups():
    bcn = BatchChannelNorm(64, groups=32).train()
    y = bcn(torch.randn(4, 64, 5, 5) * 3 + 2)
    g = y.view(4, 32, -1)
    torch.testing.assert_close(g.mean(-1), torch.zeros(4, 32), atol=1e-4, rtol=0)


def test_ibn_splits_instance_and_batch_norm():
    ibn = IBNorm(8).train()
    x = torch.randn(3, 8, 4, 4) * 5 + 1
    y = ibn(x)
    # instance-normalized half: every sample's channel has zero mean
    torch.testing.assert_close(y[:, :4].mean((2, 3)), torch.zeros(3, 4), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="no channels"):
        IBNorm(1)


def test_space_to_depth_keeps_every_pixel():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    y = space_to_depth(x)
    assert y.shape == (2, 12, 2, 2)
    assert torch.equal(y.flatten().sort().values, x.flatten().sort().values)
    assert SPDConv(3, 8)(x).shape == (2, 8, 2, 2)
    with pytest.raises(ValueError, match="divisible"):
        space_to_depth(torch.randn(1, 3, 5, 4))


def test_condconv_with_one_expert_and_constant_routing_is_a_scaled_conv():
    cc = CondConv2d(4, 6, 3, num_experts=1, bias=True)
    nn.init.zeros_(cc.routing.weight)
    nn.init.zeros_(cc.routing.bias)  # sigmoid(0) = 0.5 for every example
    nn.init.normal_(cc.bias)
    x = torch.randn(3, 4, 7, 7)
    ref = F.conv2d(x, 0.5 * cc.weight[0], 0.5 * cc.bias[0], padding=1)
    torch.testing.assert_close(cc(x), ref, rtol=1e-5, atol=1e-5)


def test_condconv_mixes_per_example():
    cc = CondConv2d(4, 4, 3, num_experts=3, groups=2, stride=2)
    x = torch.randn(2, 4, 8, 8)
    y = cc(x)
    assert y.shape == (2, 4, 4, 4)
    # each example's output equals convolving it alone
    torch.testing.assert_close(y[1:], cc(x[1:]), rtol=1e-5, atol=1e-5)


def test_rotation_by_zero_is_identity_and_opposite_angles_mirror():
    w = torch.randn(1, 2, 3, 3, 3)
    torch.testing.assert_close(rotate_kernels(w, torch.zeros(1, 1))[0], w, atol=1e-6, rtol=0)
    # rotating a transposed kernel by -theta is the transpose of rotating it by +theta
    t = torch.full((1, 1), 0.4)
    plus = rotate_kernels(w, t)[0, 0]
    minus = rotate_kernels(w.transpose(-1, -2), -t)[0, 0]
    torch.testing.assert_close(minus, plus.transpose(-1, -2), atol=1e-6, rtol=0)


def test_adaptive_rotated_conv_reduces_to_conv_without_rotation():
    arc = AdaptiveRotatedConv2d(4, 5, 3, num_kernels=1)
    nn.init.zeros_(arc.to_angle.weight)  # angle 0
    nn.init.zeros_(arc.to_weight.weight)
    nn.init.constant_(arc.to_weight.bias, 100.0)  # sigmoid -> 1
    x = torch.randn(2, 4, 6, 6)
    torch.testing.assert_close(arc(x), F.conv2d(x, arc.weight[0], padding=1), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["rw", "lr", "rw_lr"])
def test_laurel_starts_as_plain_residual(mode):
    lr = LaurelResidual(8, mode, rank=2)
    fx, s = torch.randn(2, 8, 3, 3), torch.randn(2, 8, 3, 3)
    torch.testing.assert_close(lr(fx, s), fx + s)
    with torch.no_grad():
        if "rw" in mode:
            lr.alpha.fill_(2.0)
        if "lr" in mode:
            nn.init.normal_(lr.up.weight)
    assert not torch.allclose(lr(fx, s), fx + s)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(attn_layer="pkcam"),
        dict(norm_layer="ibn"),
        dict(conv_layer="ws", norm_layer="bcn"),
        dict(downsample="spd"),
        dict(conv_layer="condconv"),
        dict(conv_layer="arconv"),
        dict(residual="laurel_rw_lr"),
    ],
)
def test_every_plugin_is_one_argument_of_resnet(kwargs):
    model = create_model("resnet_pico", num_classes=5, **kwargs)
    out = model(torch.randn(2, 3, 32, 32))
    out.sum().backward()
    assert out.shape == (2, 5)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_sk_is_one_argument_of_a_bottleneck_resnet():
    model = create_model("resnext_pico", num_classes=5, conv_layer="sk")
    out = model(torch.randn(2, 3, 32, 32))
    out.sum().backward()
    assert out.shape == (2, 5)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_resnet_rejects_unknown_plugin_names():
    with pytest.raises(ValueError, match="unknown residual"):
        create_model("resnet_pico", residual="skip")
    with pytest.raises(ValueError, match="unknown conv layer"):
        create_model("resnet_pico", conv_layer="deform")
    with pytest.raises(ValueError, match="unknown attention layer"):
        create_model("resnet_pico", attn_layer="nope")
