"""InceptionNeXt: the inception depthwise mixer's channel split and branch kernels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from archbench.models import create_model
from archbench.models.inceptionnext import InceptionDWConv2d


def test_mixer_keeps_identity_channels_and_applies_band_kernels():
    torch.manual_seed(0)
    mixer = InceptionDWConv2d(32, square_kernel=3, band_kernel=11, branch_ratio=0.125)
    assert mixer.split == (20, 4, 4, 4)
    assert mixer.dwconv_w.kernel_size == (1, 11) and mixer.dwconv_h.kernel_size == (11, 1)
    x = torch.randn(2, 32, 14, 14)
    out = mixer(x)
    assert out.shape == x.shape
    assert torch.equal(out[:, :20], x[:, :20])  # identity branch untouched
    ref_w = F.conv2d(
        x[:, 24:28], mixer.dwconv_w.weight, mixer.dwconv_w.bias, padding=(0, 5), groups=4
    )
    assert torch.allclose(out[:, 24:28], ref_w, atol=1e-6)
    # a horizontal band only mixes along W: changing another row leaves this row alone
    x2 = x.clone()
    x2[:, 24:28, 0] += 1.0
    assert torch.allclose(mixer(x2)[:, 24:28, 5], out[:, 24:28, 5])


def test_mixer_rejects_bad_ratio():
    with pytest.raises(ValueError, match="branch_ratio"):
        InceptionDWConv2d(8, branch_ratio=0.5)


def test_last_stage_mlp_ratio_and_head():
    with torch.device("meta"):
        model = create_model("inceptionnext_tiny")
    assert model.stages[3][1].mlp.fc1.out_channels == 3 * 768
    assert model.stages[2][1].mlp.fc1.out_channels == 4 * 384
    assert model.head.fc1.out_features == 3 * 768


def test_pre_logits_and_reset():
    model = create_model("inceptionnext_pico", num_classes=5).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (1, 256)
        model.reset_classifier(3)
        assert model(x).shape == (1, 3)
