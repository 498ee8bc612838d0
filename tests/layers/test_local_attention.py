"""Local attention variants agree with plain attention where they reduce to it."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from archbench.layers import reference_attention
from archbench.layers.local_attention import (
    AggregatedAttention,
    CosineCpbAttention,
    HaloAttention,
    MSAConv2d,
    SlicedGroupAttention,
    WindowAttention,
    continuous_position_index,
    pooled_axis_positions,
)


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, c = t.shape
    return t.reshape(b, n, heads, c // heads).transpose(1, 2)


def test_pooled_axis_positions_match_adaptive_pool():
    for length, pooled in [(7, 3), (8, 4), (56, 7), (5, 5)]:
        ours = torch.tensor(pooled_axis_positions(length, pooled))
        ref = F.adaptive_avg_pool1d(torch.arange(length, dtype=torch.float32)[None], pooled)[0]
        torch.testing.assert_close(ours, ref)


def test_continuous_position_table_gives_log_spaced_offsets():
    query, key, pre = (4, 6), (2, 3), (4, 6)
    table, index = continuous_position_index(query, key, pre, torch.device("cpu"))
    kh = pooled_axis_positions(4, 2)
    kw = pooled_axis_positions(6, 3)
    rows = table[index].view(4, 6, 2, 3, 2)
    for qh, qw, i, j in [(0, 0, 0, 0), (3, 5, 1, 2), (2, 1, 0, 2)]:
        dy = (qh - kh[i]) / 3 * 8
        dx = (qw - kw[j]) / 5 * 8
        expect = [math.copysign(math.log2(abs(v) + 1) / 3, v) for v in (dy, dx)]
        torch.testing.assert_close(rows[qh, qw, i, j], torch.tensor(expect))


def test_cosine_cpb_attention_equals_reference():
    torch.manual_seed(0)
    attn = CosineCpbAttention(16, 2).eval()
    x = torch.randn(2, 12, 16)
    size = (3, 4)
    out = attn(x, size)
    q, k, v = attn.qkv(x).chunk(3, dim=-1)
    q, k, v = _heads(q, 2), _heads(k, 2), _heads(v, 2)
    scale = F.softplus(attn.temperature) * math.log(12)
    q = (F.normalize(q, dim=-1) + attn.query_embedding) * scale * math.sqrt(8)
    bias = attn.cpb(size, size, size)
    ref = reference_attention(q, F.normalize(k, dim=-1), v, bias)
    ref = attn.proj(ref.transpose(1, 2).reshape(2, 12, 16))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_aggregated_attention_is_masked_attention_over_window_and_pooled_keys():
    """With the learnable tokens at zero, aggregated attention is ordinary attention over
    [every token, masked to the 3x3 neighbourhood] + [pooled tokens] with the local
    relative bias and the continuous pooled bias."""
    torch.manual_seed(0)
    h, w, dim, heads = 4, 5, 16, 2
    attn = AggregatedAttention(dim, heads, window_size=3, sr_ratio=2).eval()
    with torch.no_grad():
        attn.learnable_tokens.zero_()
        attn.learnable_bias.zero_()
        attn.relative_pos_bias_local.normal_()
    n = h * w
    x = torch.randn(2, n, dim)
    out = attn(x, (h, w))

    pool = attn.pool_size((h, w))
    p = pool[0] * pool[1]
    q = F.normalize(_heads(attn.q(x), heads), dim=-1)
    k, v = attn.kv(x).chunk(2, dim=-1)
    pooled = F.adaptive_avg_pool2d(attn.act(attn.sr(x.transpose(1, 2).reshape(2, dim, h, w))), pool)
    pooled = attn.norm(pooled.flatten(2).transpose(1, 2))
    kp, vp = attn.kv(pooled).chunk(2, dim=-1)
    keys = torch.cat(
        [F.normalize(_heads(k, heads), dim=-1), F.normalize(_heads(kp, heads), dim=-1)], 2
    )
    values = torch.cat([_heads(v, heads), _heads(vp, heads)], 2)

    bias = torch.full((heads, n, n + p), float("-inf"))
    counts = torch.zeros(n)
    for qi in range(n):
        qy, qx = divmod(qi, w)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                ky, kx = qy + dy, qx + dx
                if 0 <= ky < h and 0 <= kx < w:
                    bias[:, qi, ky * w + kx] = attn.relative_pos_bias_local[
                        :, (dy + 1) * 3 + dx + 1
                    ]
                    counts[qi] += 1
    bias[:, :, n:] = attn.cpb((h, w), pool, (h, w))
    scale = F.softplus(attn.temperature) * torch.log(counts + p).view(1, n, 1)
    q_scaled = (q + attn.query_embedding) * scale * math.sqrt(dim // heads)
    ref = reference_attention(q_scaled, keys, values, bias)
    ref = attn.proj(ref.transpose(1, 2).reshape(2, n, dim))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_aggregated_attention_learnable_tokens_add_unnormalized_local_weights():
    torch.manual_seed(0)
    attn = AggregatedAttention(8, 1, window_size=3, sr_ratio=1).eval()
    x = torch.randn(1, 9, 8)
    base = attn(x, (3, 3))
    with torch.no_grad():
        attn.learnable_bias.fill_(1.0)  # adds the sum of the (in-image) neighbour values
    shifted = attn(x, (3, 3))
    _, v = attn.kv(x).chunk(2, dim=-1)
    vmap = v.transpose(1, 2).reshape(1, 8, 3, 3)
    neighbour_sum = F.conv2d(vmap, torch.ones(8, 1, 3, 3), padding=1, groups=8)
    extra = attn.proj(neighbour_sum.flatten(2).transpose(1, 2)) - attn.proj.bias
    torch.testing.assert_close(shifted - base, extra, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bad", [{"window_size": 2}, {"sr_ratio": 0}])
def test_aggregated_attention_rejects_bad_options(bad):
    with pytest.raises(ValueError):
        AggregatedAttention(8, 2, **bad)


# ----- HaloNet --------------------------------------------------------------------
def _halo_reference(attn: HaloAttention, x: torch.Tensor) -> torch.Tensor:
    """Global attention with relative logits computed position by position."""
    b, _, h, w = x.shape
    heads, d = attn.num_heads, attn.head_dim
    q = attn.q(x).reshape(b, heads, d, h * w).transpose(-2, -1)
    k, v = attn.kv(x).split([attn.qk_dim, attn.dim_out], dim=1)
    k = k.reshape(b, heads, d, h * w).transpose(-2, -1)
    v = v.reshape(b, heads, attn.dim_out // heads, h * w).transpose(-2, -1)
    offset = attn.block_size - 1 + attn.halo_size
    bias = torch.zeros(b, heads, h * w, h * w)
    for i in range(h * w):
        qy, qx = divmod(i, w)
        for j in range(h * w):
            ky, kx = divmod(j, w)
            r = attn.rel_height[ky - qy + offset] + attn.rel_width[kx - qx + offset]
            bias[:, :, i, j] = q[:, :, i] @ r
    out = reference_attention(q, k, v, bias)
    return out.transpose(-2, -1).reshape(b, attn.dim_out, h, w)


def test_halo_block_covering_the_image_is_global_attention():
    torch.manual_seed(0)
    attn = HaloAttention(16, 24, num_heads=2, block_size=6, halo_size=0).eval()
    x = torch.randn(2, 16, 6, 6)
    torch.testing.assert_close(attn(x), _halo_reference(attn, x), atol=1e-5, rtol=1e-5)


def test_halo_attention_sees_exactly_block_plus_halo():
    """A perturbation outside a block's halo leaves that block's output unchanged."""
    torch.manual_seed(0)
    attn = HaloAttention(8, num_heads=2, block_size=2, halo_size=1).eval()
    x = torch.randn(1, 8, 8, 8)
    y = x.clone()
    y[..., 5, 5] += 10.0  # block (0, 0) covers rows/cols 0-1, its halo reaches 2
    out_x, out_y = attn(x), attn(y)
    torch.testing.assert_close(out_x[..., :2, :2], out_y[..., :2, :2])
    assert not torch.allclose(out_x[..., 4:6, 4:6], out_y[..., 4:6, 4:6])
    z = x.clone()
    z[..., 2, 2] += 10.0  # inside the halo of block (0, 0)
    assert not torch.allclose(attn(z)[..., :2, :2], out_x[..., :2, :2])


def test_strided_halo_attention_halves_the_grid_and_pads_odd_sizes():
    attn = HaloAttention(8, 16, num_heads=2, block_size=4, halo_size=1, stride=2)
    assert attn(torch.randn(1, 8, 8, 8)).shape == (1, 16, 4, 4)
    assert attn(torch.randn(1, 8, 10, 6)).shape == (1, 16, 5, 3)
    with pytest.raises(ValueError, match="multiple of stride"):
        HaloAttention(8, block_size=3, stride=2)


# ----- SReT -----------------------------------------------------------------------
def _plain_attention(attn: SlicedGroupAttention, x: torch.Tensor, bias=None) -> torch.Tensor:
    b, n, c = x.shape
    q, k, v = (_heads(t, attn.num_heads) for t in attn.qkv(x).chunk(3, dim=-1))
    out = reference_attention(q, k, v, bias)
    return attn.proj(out.transpose(1, 2).reshape(b, n, c))


def test_sliced_group_attention_with_one_group_is_plain_attention():
    torch.manual_seed(0)
    attn = SlicedGroupAttention(16, 4).eval()
    x = torch.randn(2, 12, 16)
    torch.testing.assert_close(attn(x, 1), _plain_attention(attn, x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attn(x, 1, shuffle=True), attn(x, 1))


def test_sliced_groups_are_block_diagonal_attention():
    torch.manual_seed(0)
    attn = SlicedGroupAttention(16, 4).eval()
    x = torch.randn(2, 12, 16)
    group = torch.arange(12) // 4
    mask = torch.where(group[:, None] == group[None, :], 0.0, float("-inf"))
    torch.testing.assert_close(attn(x, 3), _plain_attention(attn, x, mask), atol=1e-5, rtol=1e-5)
    # eval-mode shuffle: slices are the strided interleave i mod 3
    inter = torch.arange(12) % 3
    mask = torch.where(inter[:, None] == inter[None, :], 0.0, float("-inf"))
    torch.testing.assert_close(
        attn(x, 3, shuffle=True), _plain_attention(attn, x, mask), atol=1e-5, rtol=1e-5
    )


def test_sliced_group_attention_rejects_groups_that_do_not_divide():
    with pytest.raises(ValueError, match="divide"):
        SlicedGroupAttention(8, 2)(torch.randn(1, 10, 8), 3)


# ----- window attention -----------------------------------------------------------
def test_window_covering_the_map_is_global_attention():
    torch.manual_seed(0)
    attn = WindowAttention(16, 2, window_size=8).eval()
    x = torch.randn(2, 24, 16)
    q, k, v = (_heads(t, 2) for t in attn.qkv(x).chunk(3, dim=-1))
    ref = attn.proj(reference_attention(q, k, v).transpose(1, 2).reshape(2, 24, 16))
    torch.testing.assert_close(attn(x, (4, 6)), ref, atol=1e-5, rtol=1e-5)


def test_windows_are_independent_and_padding_is_ignored():
    torch.manual_seed(0)
    attn = WindowAttention(8, 2, window_size=2).eval()
    x = torch.randn(1, 15, 8)  # 3 x 5 grid, padded to 4 x 6
    y = x.clone()
    y[0, 14] += 5.0  # bottom-right token: its window holds tokens (2,4) only
    out_x, out_y = attn(x, (3, 5)), attn(y, (3, 5))
    torch.testing.assert_close(out_x[0, :14], out_y[0, :14])
    single = attn.proj(attn.qkv(y[:, 14:15]).chunk(3, dim=-1)[2])  # attends to itself only
    torch.testing.assert_close(out_y[:, 14:15], single, atol=1e-5, rtol=1e-5)


# ----- TiC MSA-Conv -----------------------------------------------------------------
def test_msa_conv_attention_is_per_pixel_attention_over_its_window():
    """Each pixel: softmax(q k^T / sqrt(d)) v over its 3x3 neighbourhood, zero keys outside."""
    torch.manual_seed(0)
    layer = MSAConv2d(8, 8, 3, num_heads=2).eval()
    x = torch.randn(1, 8, 4, 5)
    q, k, v = layer.qkv(x).chunk(3, dim=1)
    ref = torch.zeros(1, 8, 4, 5)
    for y in range(4):
        for xx in range(5):
            keys, vals = [], []
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    yy, xj = y + dy, xx + dx
                    inside = 0 <= yy < 4 and 0 <= xj < 5
                    keys.append(k[0, :, yy, xj] if inside else torch.zeros(8))
                    vals.append(v[0, :, yy, xj] if inside else torch.zeros(8))
            kk = torch.stack(keys).reshape(9, 2, 4).transpose(0, 1)  # (heads, 9, d)
            vv = torch.stack(vals).reshape(9, 2, 4).transpose(0, 1)
            qq = q[0, :, y, xx].reshape(2, 1, 4)
            ref[0, :, y, xx] = reference_attention(qq, kk, vv).reshape(8)
    torch.testing.assert_close(layer.attend(x), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer(x), layer.conv(ref + x), atol=1e-5, rtol=1e-5)


def test_msa_conv_one_pixel_window_passes_values_through():
    layer = MSAConv2d(4, 4, 1).eval()
    x = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(layer.attend(x), layer.qkv(x).chunk(3, dim=1)[2])


def test_cyclic_shift_connects_distant_tokens_and_any_size_works():
    torch.manual_seed(0)
    plain = MSAConv2d(8, 8, 3).eval()
    shifted = MSAConv2d(8, 8, 3, shift=4).eval()
    shifted.load_state_dict(plain.state_dict())
    x = torch.randn(1, 8, 9, 9)
    y = x.clone()
    y[..., 4, 0] += 5.0  # four columns left of pixel (4, 4)
    assert torch.equal(plain.attend(x)[..., 4, 4], plain.attend(y)[..., 4, 4])
    assert not torch.allclose(shifted.attend(x)[..., 4, 4], shifted.attend(y)[..., 4, 4])
    down = MSAConv2d(8, 16, 3, stride=2)
    assert down(torch.randn(1, 8, 7, 10)).shape == (1, 16, 4, 5)
