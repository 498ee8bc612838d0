"""AFFNet: AFF blocks hold the frequency mixer, odd grids work, counts truncate to the README."""

from __future__ import annotations

import math

import pytest
import torch

from archbench.layers.freq_mixers import AdaptiveFrequencyFilter
from archbench.models import create_model


def test_affnet_uses_aff_mixers_and_takes_odd_sizes():
    model = create_model("affnet_pico", num_classes=5).eval()
    assert any(isinstance(m, AdaptiveFrequencyFilter) for m in model.modules())
    with torch.no_grad():
        out = model(torch.randn(1, 3, 48, 48))  # grids 24, 12, 6, 3: odd in the last stage
    assert out.shape == (1, 5) and torch.isfinite(out).all()


@pytest.mark.parametrize("name, readme", [("affnet_et", 1.4), ("affnet_t", 2.6), ("affnet", 5.5)])
def test_counts_truncate_to_the_readme(name, readme):
    with torch.device("meta"):
        model = create_model(name)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert math.floor(params * 10) / 10 == pytest.approx(readme)
