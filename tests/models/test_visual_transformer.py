"""Visual Transformers: tokenizers, token transformer and projector follow the equations."""

from __future__ import annotations

import pytest
import torch

from archbench.layers import reference_attention
from archbench.models import create_model
from archbench.models.visual_transformer import (
    FilterTokenizer,
    Projector,
    RecurrentTokenizer,
    TokenTransformer,
)


def test_filter_tokenizer_is_pixel_softmax_pooling():
    torch.manual_seed(0)
    tok = FilterTokenizer(8, 4, 12)
    x = torch.randn(2, 8, 3, 5)
    a = tok.attn(x).flatten(2).softmax(-1)  # (B, L, HW): each token's weights sum to 1
    v = tok.value(x).flatten(2).transpose(1, 2)
    torch.testing.assert_close(tok(x), a @ v)
    # a constant feature map gives identical tokens whatever the attention maps
    const = torch.ones(1, 8, 3, 5)
    t = tok(const)
    torch.testing.assert_close(t, t[:, :1].expand_as(t))


def test_recurrent_tokenizer_uses_previous_tokens_as_queries():
    torch.manual_seed(0)
    tok = RecurrentTokenizer(8, 4, 12)
    x, t_in = torch.randn(2, 8, 3, 5), torch.randn(2, 4, 12)
    w_r = tok.query(t_in)  # (B, L, C)
    a = (w_r @ x.flatten(2)).softmax(-1)  # softmax over pixels, no scaling
    ref = a @ tok.value(x).flatten(2).transpose(1, 2)
    torch.testing.assert_close(tok(x, t_in), ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="previous module"):
        tok(x)


def test_token_transformer_equation():
    torch.manual_seed(0)
    tr = TokenTransformer(16, 0.0)
    t = torch.randn(2, 5, 16)
    k, q = tr.key(t), tr.query(t)
    t1 = t + reference_attention(k, q, t)  # softmax((T K)(T Q)^T / sqrt(d)) T
    ref = t1 + tr.fc2(torch.relu(tr.fc1(t1)))
    torch.testing.assert_close(tr(t), ref, atol=1e-5, rtol=1e-5)


def test_projector_equation():
    torch.manual_seed(0)
    proj = Projector(8, 12)
    x, t = torch.randn(2, 8, 3, 4), torch.randn(2, 5, 12)
    q = proj.query(x).flatten(2).transpose(1, 2)
    out = reference_attention(q, proj.key(t), proj.value(t))
    ref = x + out.transpose(1, 2).reshape(2, 8, 3, 4)
    torch.testing.assert_close(proj(x, t), ref, atol=1e-5, rtol=1e-5)


def test_vt_replaces_the_last_stage_with_token_modules():
    model = create_model("vt_pico", num_classes=4).eval()
    assert isinstance(model.vt[0].tokenizer, FilterTokenizer)
    assert isinstance(model.vt[1].tokenizer, RecurrentTokenizer)
    assert model.vt[-1].projector is None
    with torch.no_grad():
        tokens = model.forward_features(torch.randn(2, 3, 32, 32))
    assert tokens.shape == (2, 8, 128)
    with pytest.raises(ValueError, match="no grid"):
        model.tokens_to_map(tokens)
