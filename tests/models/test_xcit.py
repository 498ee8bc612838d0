"""XCiT: class attention touches only the class token; any grid size works."""

from __future__ import annotations

import torch

from archbench.models import create_model
from archbench.models.xcit import fourier_features


def test_class_attention_block_updates_only_class_token_without_tokens_norm():
    torch.manual_seed(0)
    m = create_model("xcit_pico", tokens_norm=False).eval()
    blk = m.cls_attn_blocks[0]
    x = torch.randn(2, 17, 96)
    y = blk(x)
    # patches: x + gamma1 * norm1(x), nothing from other tokens
    expected = x[:, 1:] + blk.gamma1 * blk.norm1(x)[:, 1:]
    torch.testing.assert_close(y[:, 1:], expected)
    x2 = x.clone()
    x2[:, 5] += torch.randn(96)
    assert torch.allclose(blk(x2)[:, 6:], y[:, 6:])  # no mixing between patch tokens
    assert not torch.allclose(blk(x2)[:, 0], y[:, 0])  # the class token reads them


def test_fourier_features_and_other_sizes():
    f = fourier_features(4, 6, hidden_dim=8)
    assert f.shape == (1, 16, 4, 6)
    assert torch.allclose(
        f[0, 8],
        torch.sin(f.new_tensor([(j + 1) / (6 + 1e-6) * 2 * torch.pi for j in range(6)])).expand(
            4, 6
        ),
        atol=1e-5,
    )
    m = create_model("xcit_pico", num_classes=4).eval()
    assert m(torch.randn(1, 3, 48, 40)).shape == (1, 4)
