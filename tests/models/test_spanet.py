"""SPANet: every block uses SPAM, odd sizes work, and the counts match the release table."""

from __future__ import annotations

import pytest
import torch

from archbench.layers.freq_mixers import SpectralPoolingAggregationModulation
from archbench.models import create_model


def test_spanet_uses_spam_and_takes_odd_sizes():
    model = create_model("spanet_pico", num_classes=5).eval()
    blocks = [m for m in model.modules() if hasattr(m, "token_mixer")]
    assert blocks
    assert all(isinstance(b.token_mixer, SpectralPoolingAggregationModulation) for b in blocks)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 40, 40))  # grids 20, 10, 5, 3: odd sizes inside
    assert out.shape == (1, 5) and torch.isfinite(out).all()


@pytest.mark.parametrize("name, readme", [("spanet_small", 29), ("spanet_medium", 42)])
def test_small_and_medium_round_to_the_readme(name, readme):
    with torch.device("meta"):
        model = create_model(name)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6) == readme
