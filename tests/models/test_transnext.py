"""TransNeXt: stage layout and resolution changes."""

from __future__ import annotations

import torch

from archbench.layers.local_attention import AggregatedAttention, CosineCpbAttention
from archbench.models import create_model


def test_pico_stages_halve_the_grid_and_use_global_attention_last():
    model = create_model("transnext_pico", num_classes=5).eval()
    assert [f.reduction for f in model.feature_info] == [2, 4, 8, 16]
    kinds = [type(s.blocks[0].attn) for s in model.stages]
    assert kinds == [AggregatedAttention] * 3 + [CosineCpbAttention]


def test_position_tables_follow_input_size():
    """Position biases are generated from the grid, so other input sizes run unchanged."""
    model = create_model("transnext_pico", num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5)
        assert model(torch.randn(1, 3, 40, 40)).shape == (1, 5)


def test_convolutional_glu_hidden_width_is_two_thirds():
    model = create_model("transnext_pico")
    glu = model.stages[0].blocks[0].mlp
    assert glu.fc1.out_features == 2 * int(2 * 24 * 8 / 3)
    assert glu.dwconv.groups == glu.dwconv.in_channels
