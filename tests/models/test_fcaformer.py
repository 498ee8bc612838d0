"""FcaFormer: forward cross attention reduces to attention over [own, cross] tokens."""

from __future__ import annotations

import pytest
import torch

from archbench.layers import reference_attention
from archbench.models import create_model
from archbench.models.fcaformer import FcaAttentionBlock


def _attn_out(blk: FcaAttentionBlock, x: torch.Tensor, cross: torch.Tensor | None):
    b, n, c = x.shape
    h = blk.num_heads
    split = lambda t: t.reshape(b, -1, h, c // h).transpose(1, 2)  # noqa: E731
    q, k, v = (split(t) for t in blk.qkv(blk.norm1(x)).chunk(3, dim=-1))
    bias = blk.attention_biases[:, blk.attention_bias_idxs]
    if cross is not None:
        _, ks, vs = (
            split(t) for t in blk.qkv(blk.cross_norm(cross * blk.cross_scale)).chunk(3, -1)
        )
        k, v = torch.cat([k, ks], 2), torch.cat([v, vs], 2)
        bias = torch.cat([bias, blk.cross_bias[0].expand(h, n, -1)], -1)
    out = reference_attention(q, k, v, bias)
    return x + blk.gamma_1 * blk.proj(out.transpose(1, 2).reshape(b, n, c))


def _tail(blk: FcaAttentionBlock, x: torch.Tensor) -> torch.Tensor:
    b, n, c = x.shape
    y = blk.local_conv(x.transpose(1, 2).reshape(b, c, *blk.grid)).flatten(2).transpose(1, 2)
    return y + blk.gamma_2 * blk.mlp(blk.norm2(y))


@pytest.mark.parametrize("num_cross_blocks", [0, 2])
def test_forward_cross_attention_matches_reference(num_cross_blocks):
    torch.manual_seed(0)
    blk = FcaAttentionBlock(16, (4, 4), 2, num_cross_blocks, makes_cross_tokens=True).eval()
    with torch.no_grad():
        blk.gamma_1.fill_(0.5)
        blk.gamma_2.fill_(0.5)
        blk.attention_biases.normal_()
        if num_cross_blocks:
            blk.cross_bias.normal_()
            blk.cross_scale.uniform_(0.5, 1.5)
    x = torch.randn(2, 16, 16)
    cross = torch.randn(2, blk.num_cross, 16) if num_cross_blocks else None
    out, new_cross = blk(x, cross)
    torch.testing.assert_close(out, _tail(blk, _attn_out(blk, x, cross)), atol=1e-5, rtol=1e-5)
    assert new_cross.shape == (2, 1, 16)  # a 4x4 grid merges into ceil(4/4)^2 cross token


def test_stage_feeds_cross_tokens_forward():
    model = create_model("fcaformer_l1")
    stage = model.stages[4]  # first attention stage, 14 x 14 at 224
    counts = [blk.num_cross for blk in stage.blocks]
    assert counts == [16 * i for i in range(6)]  # ceil(14/4)^2 = 16 tokens per earlier block
    assert stage.blocks[-1].merge is None
    with pytest.raises(ValueError, match="cross tokens"):
        stage.blocks[1](torch.randn(1, 196, 192))
