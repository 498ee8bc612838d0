"""CBAM, ULSAM, batch-channel norm and the AFF mask against their releases' equations."""

import torch
import torch.nn.functional as F

from archbench.layers import create_attn
from archbench.layers.conv_variants import BatchChannelNorm
from archbench.layers.freq_mixers import AdaptiveFrequencyFilter
from archbench.models import create_model


def _randomize_bn(module: torch.nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            if m.affine:
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.normal_()


def test_cbam_spatial_gate_has_batchnorm_after_the_conv():
    torch.manual_seed(0)
    cbam = create_attn("cbam", 32).eval()
    _randomize_bn(cbam)
    x = torch.randn(2, 32, 6, 5)
    # written out: channel gate, then conv 7x7 -> BN(1) -> sigmoid on [mean, max] maps
    mlp = lambda d: cbam.fc2(F.relu(cbam.fc1(d)))  # noqa: E731
    xc = x * torch.sigmoid(mlp(x.mean((2, 3), keepdim=True)) + mlp(x.amax((2, 3), keepdim=True)))
    maps = torch.cat([xc.mean(1, keepdim=True), xc.amax(1, keepdim=True)], 1)
    bn = cbam.spatial_bn
    z = F.conv2d(maps, cbam.spatial.weight, padding=3)
    z = (z - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    torch.testing.assert_close(cbam(x), xc * torch.sigmoid(z))


def test_cbam_resnet50_count_includes_the_spatial_batchnorm():
    with torch.device("meta"):
        with_cbam = create_model("resnet50", attn_layer="cbam")
        plain = create_model("resnet50")
    n = sum(p.numel() for p in with_cbam.parameters()) - sum(p.numel() for p in plain.parameters())
    fc = sum(
        c * (c // 16) * 2 + c // 16 + c for c in [256] * 3 + [512] * 4 + [1024] * 6 + [2048] * 3
    )
    assert n == fc + 16 * (2 * 49 + 2)  # per block: shared MLP, 7x7 conv (2->1), BN(1)


def test_ulsam_subspace_matches_the_release():
    torch.manual_seed(0)
    m = create_attn("ulsam", 8, groups=2).eval()
    _randomize_bn(m)
    with torch.no_grad():  # centre the attention logits so that some are negative
        m.pw_bn.running_mean.zero_()
        m.pw_bn.running_var.fill_(1.0)
        m.pw_bn.bias.zero_()
        m.pw.weight.copy_(torch.tensor([1.0, -1.0, 1.0, -1.0]).repeat(2, 1).view(2, 4, 1, 1))
        m.pw.bias.zero_()
        m.dw.weight.fill_(1.0)  # keep every channel alive through the first ReLU
        m.dw.bias.zero_()
        m.dw_bn.running_mean.zero_()
        m.dw_bn.bias.zero_()
    x = torch.randn(2, 8, 5, 6)
    out = m(x)
    for g in range(2):
        xs = x[:, 4 * g : 4 * (g + 1)]
        # depthwise 1x1 -> BN -> ReLU -> maxpool 3x3 -> pointwise (4 -> 1) -> BN -> ReLU
        dw_w = m.dw.weight[4 * g : 4 * (g + 1), 0, 0, 0][None, :, None, None]
        dw_b = m.dw.bias[4 * g : 4 * (g + 1)][None, :, None, None]
        bn = m.dw_bn
        sl = slice(4 * g, 4 * (g + 1))
        z = xs * dw_w + dw_b
        z = (z - bn.running_mean[sl, None, None]) / torch.sqrt(
            bn.running_var[sl, None, None] + bn.eps
        ) * bn.weight[sl, None, None] + bn.bias[sl, None, None]
        z = F.max_pool2d(F.relu(z), 3, 1, 1)
        p = (z * m.pw.weight[g, :, 0, 0][None, :, None, None]).sum(1) + m.pw.bias[g]
        pb = m.pw_bn
        p = (p - pb.running_mean[g]) / torch.sqrt(pb.running_var[g] + pb.eps) * pb.weight[g]
        p = p + pb.bias[g]
        assert (p < 0).any() and (p > 0).any()  # the ReLU before the softmax matters here
        p = F.relu(p)
        attn = p.flatten(1).softmax(-1).view(2, 1, 5, 6)
        torch.testing.assert_close(out[:, sl], xs * attn + xs)


def test_batch_channel_norm_is_affine_batchnorm_then_per_group_affine_groupnorm():
    torch.manual_seed(0)
    bcn = BatchChannelNorm(8, groups=4).train()
    assert bcn.bn.affine
    assert bcn.weight.shape == bcn.bias.shape == (4,)
    with torch.no_grad():
        bcn.bn.weight.uniform_(0.5, 2.0)
        bcn.bn.bias.normal_()
        bcn.weight.copy_(torch.tensor([0.5, 1.0, 2.0, -1.0]))
        bcn.bias.copy_(torch.tensor([0.1, 0.0, -0.3, 2.0]))
    x = torch.randn(3, 8, 4, 5) * 2 + 1
    out = bcn(x)
    # written out: batch statistics per channel, then statistics per sample and group
    mu = x.mean((0, 2, 3), keepdim=True)
    var = x.var((0, 2, 3), keepdim=True, unbiased=False)
    y = (x - mu) / torch.sqrt(var + 1e-5) * bcn.bn.weight[:, None, None] + bcn.bn.bias[
        :, None, None
    ]
    y = y.view(3, 4, -1)
    y = (y - y.mean(-1, keepdim=True)) / torch.sqrt(y.var(-1, keepdim=True, unbiased=False) + 1e-5)
    y = y * bcn.weight[:, None] + bcn.bias[:, None]
    torch.testing.assert_close(out, y.view_as(x), rtol=1e-4, atol=1e-4)


def test_aff_spectral_mlp_activation_is_an_argument_and_affnet_uses_silu():
    torch.manual_seed(0)
    relu = AdaptiveFrequencyFilter(8, num_groups=2)
    silu = AdaptiveFrequencyFilter(8, num_groups=2, act="silu")
    silu.load_state_dict(relu.state_dict())
    spec = torch.fft.rfft2(torch.randn(1, 8, 5, 5), norm="ortho")
    g = spec.view(1, 2, 4, 5, 3)
    re, im = silu._complex_linear(g.real, g.imag, silu.w1, silu.b1)
    re, im = silu._complex_linear(F.silu(re), F.silu(im), silu.w2, silu.b2)
    ref = torch.complex(F.softshrink(re, 0.01), F.softshrink(im, 0.01)).reshape(1, 8, 5, 3)
    torch.testing.assert_close(silu.mask(spec), ref)
    assert not torch.allclose(relu.mask(spec), ref)
    model = create_model("affnet_pico")
    mixers = [m for m in model.modules() if isinstance(m, AdaptiveFrequencyFilter)]
    assert mixers and all(isinstance(m.act_re, torch.nn.SiLU) for m in mixers)
