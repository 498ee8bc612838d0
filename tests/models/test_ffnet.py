"""FFNet: FFNified attention's formula, exact re-parameterisation, and the README counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from archbench.models import create_model
from archbench.models.ffnet import FFNifiedAttention


def test_ffnified_attention_is_query_key_gelu_value():
    m = FFNifiedAttention(4, key_kernel=3, value_kernel=5).eval()
    x = torch.randn(1, 4, 6, 6)
    q = m.fc(x)
    key = F.conv2d(q, m.conv1.weight, m.conv1.bias, padding=1, groups=4)
    value = F.conv2d(F.gelu(key), m.conv2.weight, m.conv2.bias, padding=2, groups=4)
    torch.testing.assert_close(m(x), value)


def test_reparameterized_model_computes_the_same_function():
    torch.manual_seed(0)
    model = create_model("ffnet_pico", num_classes=5)
    for mod in model.modules():  # non-trivial BN statistics and affine terms
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            torch.nn.init.uniform_(mod.weight, 0.5, 1.5)
            torch.nn.init.uniform_(mod.bias, -0.2, 0.2)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        model.reparameterize()
        after = model(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.stages.modules())
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["ffnet_1", "ffnet_2", "ffnet_3", "ffnet_4"])
def test_reparameterized_counts_match_readme(name):
    with torch.device("meta"):
        model = create_model(name).eval().reparameterize()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(params / model.model_card.params_m - 1) < 0.005
