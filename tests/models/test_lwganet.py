"""LWGANet: the LWGA block's four branches against written-out computations, and counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from archbench.models import create_model, get_model_card
from archbench.models.lwganet import LWGABlock, shear_rows, unshear_rows


def _randomize_bn(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)


def _bn(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    shape = (1, -1, 1, 1)
    return (x - bn.running_mean.view(shape)) / torch.sqrt(
        bn.running_var.view(shape) + bn.eps
    ) * bn.weight.view(shape) + bn.bias.view(shape)


def _blur_stride3(x: torch.Tensor) -> torch.Tensor:
    """Zhang's BlurPool (filter size 4, reflect padding 1/2) written out."""
    a = torch.tensor([1.0, 3.0, 3.0, 1.0])
    k = (a[:, None] * a[None, :]) / 64.0
    c = x.shape[1]
    return F.conv2d(
        F.pad(x, (1, 2, 1, 2), mode="reflect"), k.expand(c, 1, 4, 4), stride=3, groups=c
    )


def _diag_kernel(w: torch.Tensor) -> torch.Tensor:
    """A (k x 3) depthwise kernel run on the row-sheared map equals this dense (k x k+2)
    kernel on the original map: tap (a, b) moves to column b - (a - k // 2) + k // 2."""
    c, _, k, three = w.shape
    p = k // 2
    dense = w.new_zeros(c, 1, k, k + 2)
    for a in range(k):
        for b in range(three):
            dense[:, :, a, b - (a - p) + p] = w[:, :, a, b]
    return dense


def test_shear_round_trip_and_diagonal_conv():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 7)
    s = shear_rows(x)
    assert s.shape == (2, 3, 5, 11)
    for i in range(5):
        torch.testing.assert_close(s[:, :, i, i : i + 7], x[:, :, i])
    torch.testing.assert_close(unshear_rows(s, 7), x)
    conv = nn.Conv2d(3, 3, (5, 3), padding=(2, 1), groups=3, bias=False)
    got = unshear_rows(conv(shear_rows(x)), 7)
    want = F.conv2d(x, _diag_kernel(conv.weight), padding=(2, 3), groups=3)
    torch.testing.assert_close(got, want)


def _mra_reference(mra: nn.Module, x: torch.Tensor) -> torch.Tensor:
    t = _blur_stride3(F.max_pool2d(x, 3, 1, 1))
    c = x.shape[1]
    k = mra.H_att1.kernel_size[0]
    p = k // 2
    att = F.conv2d(t, mra.H_att1.weight, padding=(p, 1), groups=c)
    att = att + F.conv2d(t, mra.V_att1.weight, padding=(1, p), groups=c)
    att = att + F.conv2d(t, _diag_kernel(mra.H_att2.weight), padding=(p, p + 1), groups=c)
    # the column shear is the row shear of the transposed map
    vt = _diag_kernel(mra.V_att2.weight.transpose(-1, -2))
    att = att + F.conv2d(t.transpose(-1, -2), vt, padding=(p, p + 1), groups=c).transpose(-1, -2)
    gate = torch.sigmoid(_bn(att, mra.norm))
    rows = (torch.arange(x.shape[2]) * t.shape[2]) // x.shape[2]
    cols = (torch.arange(x.shape[3]) * t.shape[3]) // x.shape[3]
    return x * gate[:, :, rows][:, :, :, cols]


def test_last_stage_block_matches_written_out_branches():
    torch.manual_seed(0)
    block = LWGABlock(16, stage=3, att_kernel=5, mlp_ratio=2.0, act=nn.GELU).eval()
    _randomize_bn(block)
    x = torch.randn(2, 16, 7, 6)
    x1, x2, x3, x4 = x.split(4, dim=1)
    # point attention: x + x * sigmoid(1x1 -> BN -> GELU -> 1x1)
    pc = block.PA.p_conv
    att = F.conv2d(F.gelu(_bn(F.conv2d(x1, pc[0].weight), pc[1])), pc[3].weight)
    y1 = x1 + x1 * torch.sigmoid(att)
    # local attention: 3x3 conv -> BN -> GELU
    y2 = F.gelu(_bn(F.conv2d(x2, block.LA[0].weight, padding=1), block.LA[1]))
    y3 = _mra_reference(block.MRA, x3)
    # global attention of the last stage: one head of width 4 over all 42 pixels
    tok = x4.flatten(2).transpose(1, 2)
    q, k, v = (tok @ block.GA.qkv.weight.T).chunk(3, dim=-1)
    attn = torch.softmax(q @ k.transpose(1, 2) / 2.0, dim=-1)
    ga = ((attn @ v) @ block.GA.proj.weight.T).transpose(1, 2).reshape(x4.shape)
    y4 = _bn(x4 + ga, block.norm)
    cat = torch.cat([y1, y2, y3, y4], 1)
    mlp = block.mlp
    h = F.gelu(_bn(F.conv2d(cat, mlp[0].weight), mlp[1]))
    want = x + _bn(F.conv2d(h, mlp[3].weight), block.norm1)
    torch.testing.assert_close(block(x), want, rtol=1e-4, atol=1e-5)


def test_early_stage_global_branch_written_out():
    """Stages 1-2: large-kernel selective attention on the 2x2-max-pooled map, unpooled."""
    torch.manual_seed(0)
    block = LWGABlock(16, stage=0, att_kernel=5, mlp_ratio=2.0, act=nn.GELU).eval()
    ga = block.GA
    x = torch.randn(2, 4, 9, 8)  # odd height: the unpool restores 9 rows
    y, idx = F.max_pool2d(x, 2, 2, return_indices=True)
    y = F.gelu(F.conv2d(y, ga.proj_1.weight, ga.proj_1.bias))
    a1 = F.conv2d(y, ga.conv0.weight, ga.conv0.bias, padding=2, groups=4)
    a2 = F.conv2d(a1, ga.conv_spatial.weight, ga.conv_spatial.bias, padding=9, dilation=3, groups=4)
    a1 = F.conv2d(a1, ga.conv1.weight, ga.conv1.bias)
    a2 = F.conv2d(a2, ga.conv2.weight, ga.conv2.bias)
    both = torch.cat([a1, a2], 1)
    sq = ga.conv_squeeze
    agg = torch.cat([both.mean(1, keepdim=True), both.max(1, keepdim=True).values], 1)
    sig = torch.sigmoid(F.conv2d(agg, sq.weight, sq.bias, padding=3))
    attn = F.conv2d(a1 * sig[:, 0:1] + a2 * sig[:, 1:2], ga.conv.weight, ga.conv.bias)
    out = F.conv2d(y * attn, ga.proj_2.weight, ga.proj_2.bias)
    want = torch.zeros_like(x).flatten(2)
    want.scatter_(2, idx.flatten(2), out.flatten(2))
    torch.testing.assert_close(ga(x), want.reshape(x.shape), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "name, stem_dim, depths, act",
    [
        ("lwganet_l0", 32, (1, 2, 4, 2), nn.GELU),
        ("lwganet_l1", 64, (1, 2, 4, 2), nn.GELU),
        ("lwganet_l2", 96, (1, 4, 4, 2), nn.ReLU),
    ],
)
def test_release_configurations_and_counts(name, stem_dim, depths, act):
    with torch.device("meta"):
        model = create_model(name)
    assert [len(s) - (i > 0) for i, s in enumerate(model.stages)] == list(depths)
    assert model.stem[0].out_channels == stem_dim and model.stem[0].stride == (4, 4)
    assert isinstance(model.stages[0][0].LA[2], act)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(params / get_model_card(name).params_m - 1) < 0.005


def test_small_inputs_fail_clearly():
    model = create_model("lwganet_l0").eval()
    with pytest.raises(ValueError, match="at least 68"):
        model(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="act must be one of"):
        create_model("lwganet_pico", act="swish")


def test_drfd_downsampling_written_out():
    """DRFD: 3x3 conv to 2C (one input channel per pair), then a strided depthwise conv path
    (act, BN) beside a max-pool path (BN), fused by a 1x1 conv with bias."""
    torch.manual_seed(0)
    model = create_model("lwganet_pico").eval()
    _randomize_bn(model)
    drfd = model.stages[1][0]
    x = torch.randn(2, 16, 9, 8)
    y = F.conv2d(x, drfd.conv.weight, drfd.conv.bias, padding=1, groups=16)
    conv = _bn(
        F.gelu(F.conv2d(y, drfd.conv_c.weight, drfd.conv_c.bias, 2, 1, groups=32)), drfd.norm_c
    )
    pool = _bn(F.max_pool2d(y, 3, 2, 1), drfd.norm_m)
    want = F.conv2d(torch.cat([conv, pool], 1), drfd.fusion.weight, drfd.fusion.bias)
    assert drfd.fusion.bias is not None and want.shape == (2, 32, 5, 4)
    torch.testing.assert_close(drfd(x), want, rtol=1e-4, atol=1e-5)
