"""FFNet: FFNified attention is key conv -> GELU -> value conv -> projection, per channel."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from archbench.models import create_model
from archbench.models.ffnet import FFNifiedAttention


def test_ffnified_attention_formula_and_channel_locality():
    m = FFNifiedAttention(4, kernel_size=3, expansion=2)
    x = torch.randn(1, 4, 6, 6, requires_grad=True)
    key = F.conv2d(x, m.key.weight, m.key.bias, padding=1, groups=4)
    value = F.conv2d(F.gelu(key), m.value.weight, m.value.bias, padding=1, groups=4)
    torch.testing.assert_close(m(x), m.proj(value))
    m.proj = torch.nn.Identity()
    (g,) = torch.autograd.grad(m(x)[0, 1].sum(), x)  # output channel 1 sees input channel 1
    assert g[0, 1].abs().sum() > 0 and g[0, [0, 2, 3]].abs().sum() == 0


def test_ffnet_blocks_use_ffnified_attention():
    model = create_model("ffnet_pico")
    mixers = [m.token_mixer for m in model.modules() if hasattr(m, "token_mixer")]
    assert mixers and all(isinstance(t, FFNifiedAttention) for t in mixers)
