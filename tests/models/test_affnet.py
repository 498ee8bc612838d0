"""affnet: every block mixes tokens with AdaptiveFrequencyFilter, and other resolutions keep working."""

from __future__ import annotations

import torch

from archbench.layers.freq_mixers import AdaptiveFrequencyFilter
from archbench.models import create_model


def test_affnet_uses_its_frequency_mixer_and_takes_odd_sizes():
    model = create_model("affnet_pico", num_classes=5).eval()
    blocks = [m for m in model.modules() if hasattr(m, "token_mixer")]
    assert blocks and all(isinstance(b.token_mixer, AdaptiveFrequencyFilter) for b in blocks)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 40, 40))  # grids 20, 10, 5, 3: odd sizes inside
    assert out.shape == (1, 5) and torch.isfinite(out).all()
