"""PreCropping: PAI scores (SynFlow, SNIP), layer densities, channel cropping at init."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from _prune_helpers import tiny_context, tiny_data

from archbench import create_model
from archbench.compress import CompressContext, create_compressor
from archbench.compress.init_prune import (
    layer_densities,
    precrop_ratios,
    snip_scores,
    synflow_scores,
)


def test_synflow_scores_by_hand():
    net = nn.Sequential(nn.Linear(3, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]]))
        net[2].weight.copy_(torch.tensor([[-2.0, 0.5]]))
    s = synflow_scores(net, (3,), density=0.5, rounds=1)
    w1, w2 = net[0].weight.abs(), net[2].weight.abs()
    # R = 1^T |W2| |W1| 1: dR/dW1[j, i] = |W2[0, j]|, dR/dW2[0, j] = sum_i |W1[j, i]|
    assert torch.allclose(s["0"], w1 * w2.T.expand(2, 3))
    assert torch.allclose(s["2"], w2 * w1.sum(1).unsqueeze(0))
    assert net[0].weight[0, 1] == -2.0  # the model itself is untouched


def test_snip_scores_by_autograd():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x, y = torch.randn(5, 3, 2, 2), torch.tensor([0, 1, 2, 0, 1])
    s = snip_scores(net, x, y)
    w = net[1].weight
    g = torch.autograd.grad(nn.functional.cross_entropy(net(x), y), w)[0]
    assert torch.allclose(s["1"], (g * w).abs())


def test_densities_and_ratios_by_hand():
    scores = {"a": torch.tensor([3.0, 1.0]), "b": torch.tensor([2.0, 0.5, 0.1, 0.2])}
    d = layer_densities(scores, 0.5)  # keep the top 3 of 6: 3, 2, 1
    assert d == {"a": 1.0, "b": 0.25}
    r = precrop_ratios(d)
    assert r == {"b": pytest.approx(1 - math.sqrt(0.25))}


def test_precrop_end_to_end_synflow_and_snip():
    torch.manual_seed(0)
    model = create_model("resnet_pico", num_classes=4)
    before = sum(p.numel() for p in model.parameters())
    res = create_compressor("precrop", {"density": 0.3, "rounds": 5})(
        model, CompressContext(input_shape=(3, 16, 16))
    )
    after = sum(p.numel() for p in res.model.parameters())
    assert after < 0.5 * before
    assert res.info["params_ratio"] == pytest.approx(after / before)
    conv = res.model.layer4[0].conv1  # not coupled to a residual: its own ratio applies
    removed = res.info["channel_removed"]["layer4.0.conv1"]
    assert abs(conv.out_channels - 128 * (1 - removed)) <= 1
    assert res.model(torch.randn(2, 3, 16, 16)).shape == (2, 4)
    snip = create_compressor("precrop", {"density": 0.3, "pai": "snip"})(
        create_model("resnet_pico", num_classes=4), tiny_context(tiny_data())
    )
    assert snip.info["params_ratio"] < 0.7


@pytest.mark.parametrize("args", [{"density": 1.0}, {"density": 0}, {"pai": "grasp"}])
def test_bad_arguments(args):
    with pytest.raises(ValueError):
        create_compressor("precrop", args)
