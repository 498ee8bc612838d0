"""ViT ``init="conv"`` (Can Vision Transformers Perform Convolution?): attention == conv2d.

The construction makes head h of a k^2-head layer attend to the token at offset
``(h // k - k // 2, h % k - k // 2)``; the layer is then the convolution whose weight at
that offset is ``O_h V_h`` (the head's value projection followed by its slice of the
output projection) and whose bias is ``b_O + sum_h O_h b_V,h``. The tests build that
weight from the layer's matrices and compare with ``F.conv2d`` on random tokens.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from archbench.layers.conv_attention import RelPosAttention, relative_position_index
from archbench.models import create_model

DIM, HEADS, HEAD_DIM = 144, 9, 16


def _conv_from_attention(attn, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    c, d = DIM, HEAD_DIM
    w_v, b_v = attn.qkv.weight[2 * c :], attn.qkv.bias[2 * c :]
    weight = torch.zeros(c, c, k, k)
    bias = attn.proj.bias.clone()
    for h in range(attn.num_heads):
        o_h = attn.proj.weight[:, h * d : (h + 1) * d]
        if h < k * k:
            weight[:, :, h // k, h % k] = o_h @ w_v[h * d : (h + 1) * d]
        bias = bias + o_h @ b_v[h * d : (h + 1) * d]
    return weight.detach(), bias.detach()


def _as_map(tokens: torch.Tensor, grid: int) -> torch.Tensor:
    return tokens[:, 1:].transpose(1, 2).reshape(tokens.shape[0], -1, grid, grid)


def _interior(t: torch.Tensor, k: int) -> torch.Tensor:
    h = k // 2
    return t[:, :, h:-h, h:-h] if h else t


@pytest.mark.parametrize("k", [1, 3])
def test_initialised_attention_is_a_convolution(k):
    torch.manual_seed(0)
    attn = RelPosAttention(DIM, HEADS, (6, 6), num_prefix_tokens=1, qkv_bias=True)
    with torch.no_grad():
        attn.qkv.bias.normal_()
    attn.init_as_convolution(k, logit=30.0)
    weight, bias = _conv_from_attention(attn, k)
    x = torch.randn(2, 37, DIM)
    out = _as_map(attn(x), 6)
    ref = F.conv2d(_as_map(x, 6), weight, bias, padding=k // 2)
    torch.testing.assert_close(_interior(out, k), _interior(ref, k), atol=1e-5, rtol=1e-4)


def test_no_content_term_after_init():
    """With the position logit at 0, zero queries leave uniform attention: every token gets
    the mean of all value vectors, projected."""
    torch.manual_seed(2)
    attn = RelPosAttention(DIM, HEADS, (4, 4), num_prefix_tokens=1, qkv_bias=True)
    attn.init_as_convolution(3, logit=0.0)
    x = torch.randn(2, 17, DIM)
    values = x @ attn.qkv.weight[2 * DIM :].T + attn.qkv.bias[2 * DIM :]
    ref = values.mean(1, keepdim=True) @ attn.proj.weight.T + attn.proj.bias
    torch.testing.assert_close(attn(x), ref.expand(-1, 17, -1), atol=1e-5, rtol=1e-4)


def test_vit_conv_init_makes_every_block_emulate_a_3x3_convolution():
    torch.manual_seed(1)
    model = create_model("vit_pico", embed_dim=DIM, num_heads=HEADS, depth=2, init="conv")
    x = torch.randn(2, 65, DIM)
    for block in model.blocks:
        attn = block.attn
        assert isinstance(attn, RelPosAttention)
        weight, bias = _conv_from_attention(attn, 3)
        ref = _interior(F.conv2d(_as_map(x, 8), weight, bias, padding=1), 3)
        out = _interior(_as_map(attn(x), 8), 3)
        # default logit 10: the off-offset tokens keep at most 64 exp(-10) = 0.3% of the weight
        err = (out - ref).abs().max() / ref.abs().max()
        assert err < 0.02, f"attention differs from the convolution by {err:.3%}"


def test_default_init_is_unchanged_and_conv_init_trains():
    model = create_model("vit_pico")
    assert not any(isinstance(b.attn, RelPosAttention) for b in model.blocks)
    conv = create_model("vit_pico", embed_dim=DIM, num_heads=HEADS, depth=2, init="conv")
    conv(torch.randn(2, 3, 32, 32)).square().mean().backward()
    attn = conv.blocks[0].attn  # the last block's patch tokens do not reach the class token
    assert attn.rel_pos_bias.grad.abs().sum() > 0
    assert attn.qkv.weight.grad[:DIM].abs().sum() > 0  # query projection leaves zero


def test_relative_position_index_by_hand():
    # 2x2 grid, table (3 x 3) row-major over (dy + 1, dx + 1)
    index = relative_position_index((2, 2))
    expected = torch.tensor([[4, 5, 7, 8], [3, 4, 6, 7], [1, 2, 4, 5], [0, 1, 3, 4]])
    assert torch.equal(index, expected)


def test_too_few_heads_or_bad_option_fail_clearly():
    with pytest.raises(ValueError, match="num_heads >= 9, got 4"):
        create_model("vit_pico", init="conv")
    with pytest.raises(ValueError, match="init must be 'default' or 'conv'"):
        create_model("vit_pico", init="convolution")
    with pytest.raises(ValueError, match="odd"):
        create_model("vit_pico", embed_dim=DIM, num_heads=HEADS, init="conv", conv_init_kernel=2)
