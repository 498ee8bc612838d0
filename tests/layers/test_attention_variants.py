"""Attention variants agree with plain attention where their papers say they reduce to it."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from archbench.layers import Attention, reference_attention
from archbench.layers.attention_variants import (
    ClassAttention,
    ConvolutionalAdditiveAttention,
    ConvProjectionAttention,
    CrossCovarianceAttention,
    GatedPositionalSelfAttention,
    ManhattanDecayAttention,
    RelativePositionBiasAttention,
    SpatialReductionAttention,
    TokenProjectionAttention,
    manhattan_decay_bias,
    relative_position_bias,
    retention_decay,
)


def _split(t: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, c = t.shape
    return t.reshape(b, n, heads, c // heads).transpose(1, 2)


def _merge(t: torch.Tensor) -> torch.Tensor:
    b, h, n, d = t.shape
    return t.transpose(1, 2).reshape(b, n, h * d)


def _plain_mhsa(x, wq, wk, wv, proj, heads, scale=None):
    """Written-out multi-head attention with given projections."""
    q, k, v = (_split(f(x), heads) for f in (wq, wk, wv))
    if scale is not None:  # reference_attention uses 1/sqrt(d); rescale q to get `scale`
        q = q * scale * math.sqrt(q.shape[-1])
    return proj(_merge(reference_attention(q, k, v)))


def test_token_projection_attention_matches_written_out():
    torch.manual_seed(0)
    attn = TokenProjectionAttention(27, 16, num_heads=1).eval()
    x = torch.randn(2, 10, 27)
    wq, wk, wv = (lambda t, i=i: attn.qkv(t)[..., 16 * i : 16 * (i + 1)] for i in range(3))
    expected = wv(x) + _plain_mhsa(x, wq, wk, wv, attn.proj, 1, scale=27**-0.5)
    torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)


def test_class_attention_equals_first_row_of_full_attention():
    torch.manual_seed(0)
    ca = ClassAttention(32, num_heads=4).eval()
    x = torch.randn(2, 9, 32)
    wq = ca.q
    wk = lambda t: ca.kv(t)[..., :32]  # noqa: E731
    wv = lambda t: ca.kv(t)[..., 32:]  # noqa: E731
    full = _plain_mhsa(x, wq, wk, wv, ca.proj, 4)
    torch.testing.assert_close(ca(x), full[:, :1], atol=1e-5, rtol=1e-5)


def test_conv_projection_with_identity_conv_is_linear_attention():
    """CvT's projection with the depthwise conv set to identity (and no squeeze) is MHSA."""
    torch.manual_seed(0)
    attn = ConvProjectionAttention(16, 16, num_heads=2, kv_stride=1).eval()
    with torch.no_grad():
        for conv in (attn.conv_q, attn.conv_k, attn.conv_v):
            conv[0].weight.zero_()
            conv[0].weight[:, 0, 1, 1] = 1.0  # centre tap: identity depthwise conv
            conv[1].reset_running_stats()  # eval BN with mean 0, var 1: identity up to eps
            conv[1].eps = 0.0
    x = torch.randn(2, 1 + 12, 16)
    # attention scaled by dim_out ** -0.5 as in the official CvT
    expected = _plain_mhsa(x, attn.proj_q, attn.proj_k, attn.proj_v, attn.proj, 2, scale=16**-0.5)
    torch.testing.assert_close(attn(x, (3, 4), num_prefix_tokens=1), expected, atol=1e-5, rtol=1e-5)
    plain = ConvProjectionAttention(16, 16, num_heads=2, conv_proj=False).eval()
    plain.load_state_dict({k: v for k, v in attn.state_dict().items() if not k.startswith("conv_")})
    torch.testing.assert_close(plain(x, (3, 4), 1), expected, atol=1e-5, rtol=1e-5)


def test_conv_projection_squeezes_keys():
    attn = ConvProjectionAttention(8, 8, num_heads=2, kv_stride=2)
    seen = {}
    attn.proj_k.register_forward_hook(lambda m, i, o: seen.__setitem__("k", o.shape))
    attn(torch.randn(1, 1 + 36, 8), (6, 6), 1)
    assert seen["k"] == (1, 1 + 9, 8)


def test_spatial_reduction_ratio_one_is_plain_mhsa():
    torch.manual_seed(0)
    sra = SpatialReductionAttention(24, num_heads=3, sr_ratio=1).eval()
    mhsa = Attention(24, num_heads=3, qkv_bias=True).eval()
    with torch.no_grad():
        mhsa.qkv.weight.copy_(torch.cat([sra.q.weight, sra.kv.weight]))
        mhsa.qkv.bias.copy_(torch.cat([sra.q.bias, sra.kv.bias]))
        mhsa.proj.load_state_dict(sra.proj.state_dict())
    x = torch.randn(2, 20, 24)
    torch.testing.assert_close(sra(x, (4, 5)), mhsa(x), atol=1e-5, rtol=1e-5)


def test_spatial_reduction_shrinks_keys_and_keeps_prefix():
    sra = SpatialReductionAttention(16, num_heads=2, sr_ratio=2)
    seen = {}
    sra.kv.register_forward_hook(lambda m, i, o: seen.__setitem__("kv", o.shape))
    out = sra(torch.randn(2, 1 + 64, 16), (8, 8), num_prefix_tokens=1)
    assert out.shape == (2, 65, 16)
    assert seen["kv"] == (2, 1 + 16, 32)


@pytest.mark.parametrize("tokens", [10, 4])  # more and fewer tokens than channels (8)
def test_cross_covariance_attention_matches_written_out_formula(tokens):
    """XCA = softmax(tau * K_hat^T Q_hat) over channels, per head (XCiT eq. 2): outputs and
    the gradients of the input and the temperature."""
    torch.manual_seed(0)
    xca = CrossCovarianceAttention(16, num_heads=2).train()
    with torch.no_grad():
        xca.temperature.copy_(torch.tensor([0.7, 1.9]).view(2, 1, 1))
    x = torch.randn(2, tokens, 16, requires_grad=True)
    q, k, v = (_split(t, 2) for t in xca.qkv(x).chunk(3, -1))  # (B, h, N, d)
    qn = torch.nn.functional.normalize(q, dim=-2)  # unit norm along tokens
    kn = torch.nn.functional.normalize(k, dim=-2)
    attn = (qn.transpose(-2, -1) @ kn * xca.temperature).softmax(-1)  # (B, h, d, d)
    out = (attn @ v.transpose(-2, -1)).transpose(-2, -1)  # (B, h, N, d)
    expect = xca.proj(_merge(out))
    g = torch.randn_like(expect)
    gx_ref, gt_ref = torch.autograd.grad(expect, (x, xca.temperature), g)
    got = xca(x)
    torch.testing.assert_close(got, expect, atol=1e-5, rtol=1e-5)
    gx, gt = torch.autograd.grad(got, (x, xca.temperature), g)
    torch.testing.assert_close(gx, gx_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gt, gt_ref, atol=1e-5, rtol=1e-5)


def test_cross_covariance_attention_cost_is_linear_in_tokens():
    xca = CrossCovarianceAttention(8, num_heads=2)
    assert xca(torch.randn(1, 1000, 8)).shape == (1, 1000, 8)


def test_gpsa_gated_to_content_is_plain_attention():
    torch.manual_seed(0)
    gpsa = GatedPositionalSelfAttention(24, num_heads=4).eval()
    mhsa = Attention(24, num_heads=4, qkv_bias=False).eval()
    with torch.no_grad():
        gpsa.v.weight.normal_()  # leave the identity init
        gpsa.gating_param.fill_(-50.0)  # sigmoid -> 0: all weight on content
        mhsa.qkv.weight.copy_(torch.cat([gpsa.qk.weight, gpsa.v.weight]))
        mhsa.proj.load_state_dict(gpsa.proj.state_dict())
    x = torch.randn(2, 16, 24)
    torch.testing.assert_close(gpsa(x, (4, 4)), mhsa(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("explicit", [True, False])
def test_gpsa_blend_both_forms_equal_the_formula_with_gradients(explicit, monkeypatch):
    """A = (1 - g) softmax(q k^T / sqrt(d)) + g P, out = proj(A v): the explicit blended map
    (short sequences) and the SDPA form (long ones) give it, values and gradients."""
    monkeypatch.setattr(
        GatedPositionalSelfAttention, "explicit_max_tokens", 10**6 if explicit else 0
    )
    torch.manual_seed(0)
    gpsa = GatedPositionalSelfAttention(24, num_heads=4).double()
    with torch.no_grad():
        gpsa.v.weight.normal_()
        gpsa.gating_param.copy_(torch.tensor([-1.0, 0.0, 0.5, 2.0]))  # mixed gates
    x = torch.randn(2, 6, 24, dtype=torch.float64, requires_grad=True)
    out = gpsa(x, (2, 3))
    xr = x.detach().clone().requires_grad_(True)
    q, k = (_split(t, 4) for t in gpsa.qk(xr).chunk(2, dim=-1))
    v = _split(gpsa.v(xr), 4)
    g = torch.sigmoid(gpsa.gating_param).view(1, 4, 1, 1)
    content = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(6), dim=-1)
    attn = (1 - g) * content + g * gpsa.positional_attention((2, 3), x.device)
    ref = gpsa.proj(_merge(attn @ v))
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    w = torch.randn_like(out)
    (gx,) = torch.autograd.grad((out * w).sum(), x)
    (gr,) = torch.autograd.grad((ref * w).sum(), xr)
    torch.testing.assert_close(gx, gr, rtol=1e-10, atol=1e-12)


def test_gpsa_local_init_attends_to_distinct_neighbours():
    gpsa = GatedPositionalSelfAttention(36, num_heads=9, locality_strength=10.0)
    pos = gpsa.positional_attention((5, 5), torch.device("cpu"))[0]  # (h, N, N)
    centre = 2 * 5 + 2
    targets = {int(pos[h, centre].argmax()) for h in range(9)}
    assert len(targets) == 9  # one neighbour per head: a 3x3 kernel
    for t in targets:
        assert abs(t // 5 - 2) <= 1 and abs(t % 5 - 2) <= 1
    torch.testing.assert_close(gpsa.v.weight, torch.eye(36))


def _rmt_qkv(attn, x):
    b, h, w, c = x.shape
    nh = attn.num_heads
    q, k, v = (f(x).reshape(b, h * w, c) for f in (attn.q, attn.k, attn.v))
    return _split(q, nh), _split(k, nh), _split(v, nh)


def _rmt_out(attn, out, v_grid):
    b, h, w, c = v_grid.shape
    lepe = attn.lepe(v_grid.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    return attn.out_proj(out.reshape(b, h, w, c) + lepe)


def test_manhattan_attention_with_zero_decay_is_plain_attention():
    """gamma = 1 (log gamma = 0) removes the spatial prior: plain MHSA (+ RMT's LePE)."""
    torch.manual_seed(0)
    attn = ManhattanDecayAttention(16, num_heads=2, rotary=False).eval()
    attn.decay_override = 0.0
    x = torch.randn(2, 3, 5, 16)
    q, k, v = _rmt_qkv(attn, x)
    expected = _rmt_out(attn, _merge(reference_attention(q, k, v)), attn.v(x))
    torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)


def test_manhattan_attention_applies_gamma_to_the_distance():
    torch.manual_seed(0)
    attn = ManhattanDecayAttention(16, num_heads=2, rotary=False).eval()
    x = torch.randn(1, 3, 4, 16)
    q, k, v = _rmt_qkv(attn, x)
    gammas = torch.tensor(retention_decay(2)).exp()
    ys, xs = torch.meshgrid(torch.arange(3.0), torch.arange(4.0), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dist = (ys[:, None] - ys[None]).abs() + (xs[:, None] - xs[None]).abs()
    weights = (q @ k.transpose(-2, -1) / math.sqrt(8)).exp() * gammas.view(2, 1, 1) ** dist
    out = (weights / weights.sum(-1, keepdim=True)) @ v
    torch.testing.assert_close(
        attn(x), _rmt_out(attn, _merge(out), attn.v(x)), atol=1e-5, rtol=1e-5
    )
    assert torch.allclose(manhattan_decay_bias(torch.zeros(2), (3, 4)), torch.zeros(2, 12, 12))


def test_decomposed_manhattan_attention_rows_then_columns():
    torch.manual_seed(0)
    attn = ManhattanDecayAttention(8, num_heads=2, decomposed=True, rotary=False).eval()
    x = torch.randn(1, 3, 4, 8)
    h, w, nh, d = 3, 4, 2, 4
    q, k, v = (f(x).view(1, h, w, nh, d).permute(0, 3, 1, 2, 4) for f in (attn.q, attn.k, attn.v))
    lg = attn.log_gamma
    out = torch.empty_like(v)
    for r in range(h):  # along each row, 1-D decay |dx|
        out[:, :, r] = reference_attention(
            q[:, :, r], k[:, :, r], v[:, :, r], manhattan_decay_bias(lg, w)[None]
        )
    final = torch.empty_like(v)
    for col in range(w):  # then along each column, 1-D decay |dy|
        final[:, :, :, col] = reference_attention(
            q[:, :, :, col], k[:, :, :, col], out[:, :, :, col], manhattan_decay_bias(lg, h)[None]
        )
    merged = final.permute(0, 2, 3, 1, 4).reshape(1, h * w, 8)
    torch.testing.assert_close(attn(x), _rmt_out(attn, merged, attn.v(x)), atol=1e-5, rtol=1e-5)


def test_relative_position_attention_with_zero_table_is_plain_attention():
    torch.manual_seed(0)
    attn = RelativePositionBiasAttention(32, head_dim=16, table_size=3).eval()
    x = torch.randn(2, 3, 3, 32)
    t = x.reshape(2, 9, 32)
    with torch.no_grad():
        attn.rel_table.zero_()
    expected = _plain_mhsa(t, attn.q, attn.k, attn.v, attn.proj, 2).reshape(2, 3, 3, 32)
    torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        attn.rel_table.normal_()
    bias = relative_position_bias(attn.rel_table, (3, 3))
    q, k, v = (_split(f(t), 2) for f in (attn.q, attn.k, attn.v))
    expected = attn.proj(_merge(reference_attention(q, k, v, bias[None]))).reshape(2, 3, 3, 32)
    torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)


def test_relative_position_bias_lookup():
    table = torch.arange(2 * 5 * 7, dtype=torch.float32).view(2, 5, 7)  # grid 3 x 4
    bias = relative_position_bias(table, (3, 4))
    # query (0, 0) -> key (2, 3): offset (+2, +3) -> table[:, 2 + 2, 3 + 3]
    assert torch.equal(bias[:, 0, 2 * 4 + 3], table[:, 4, 6])
    # key (0, 0) from query (1, 2): offset (-1, -2) -> table[:, 1, 1]
    assert torch.equal(bias[:, 1 * 4 + 2, 0], table[:, 1, 1])
    assert relative_position_bias(torch.zeros(2, 13, 13), (4, 4)).shape == (2, 16, 16)


def test_convolutional_additive_attention_matches_written_out_formula():
    """CATM: proj(dwc(Phi(q) + Phi(k)) * v), Phi = channel gate after spatial gate."""
    torch.manual_seed(0)
    m = ConvolutionalAdditiveAttention(8).eval()
    x = torch.randn(2, 8, 5, 6)
    q, k, v = m.qkv(x).chunk(3, dim=1)

    def phi(t, spatial, channel):
        t = t * torch.sigmoid(spatial(t))
        return t * torch.sigmoid(channel(t.mean((2, 3), keepdim=True)))

    ctx = phi(q, m.spatial_q, m.channel_q) + phi(k, m.spatial_k, m.channel_k)
    torch.testing.assert_close(m(x), m.proj(m.dwc(ctx) * v))
    # the spatial gate is a single map shared by all channels
    assert m.spatial_q[-1].out_channels == 1


def test_convolutional_additive_attention_is_local_up_to_the_channel_gate():
    """Without the global channel pooling, a far-away pixel cannot change the output."""
    torch.manual_seed(0)
    m = ConvolutionalAdditiveAttention(4).eval()
    for conv in (m.channel_q, m.channel_k):
        nn.init.zeros_(conv.weight)  # gate = sigmoid(0) = 1/2 regardless of the input
    x = torch.randn(1, 4, 12, 12)
    x2 = x.clone()
    x2[..., 11, 11] += 5.0
    diff = (m(x2) - m(x)).abs().sum(1)[0]
    assert diff[:6, :6].max() == 0 and diff[11, 11] > 0
