"""Layer-adaptive rate-distortion pruning: distortion curves, the DP allocation, end to end."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from _prune_helpers import tiny_context, tiny_data

from archbench import create_model
from archbench.compress import create_compressor
from archbench.compress.rd_prune import (
    allocate_sparsity,
    distortion_curves,
    magnitude_mask,
    prunable_layers,
)


def test_magnitude_mask_by_hand():
    w = torch.tensor([[0.5, -0.1], [-2.0, 0.3]])
    assert magnitude_mask(w, 0.5).tolist() == [[True, False], [True, False]]
    assert magnitude_mask(w, 0.75).tolist() == [[False, False], [True, False]]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_allocation_is_the_brute_force_optimum(seed):
    g = torch.Generator().manual_seed(seed)
    grid = [0.0, 0.25, 0.5, 0.75]
    sizes = [40, 100, 60, 20]
    d = torch.rand(4, 4, generator=g).cumsum(1)  # distortion grows with sparsity
    d[:, 0] = 0
    target = 0.45
    picks = allocate_sparsity(d, sizes, grid, target, budget_units=220)
    best = min(
        (float(sum(d[i, c[i]] for i in range(4))), c)
        for c in itertools.product(range(4), repeat=4)
        if sum(grid[c[i]] * sizes[i] for i in range(4)) >= target * sum(sizes)
    )
    assert sum(grid[p] * s for p, s in zip(picks, sizes)) >= target * sum(sizes)
    assert float(sum(d[i, p] for i, p in enumerate(picks))) == pytest.approx(best[0])


def test_unreachable_target():
    with pytest.raises(ValueError, match="cannot be reached"):
        allocate_sparsity(torch.zeros(2, 2), [10, 10], [0.0, 0.5], 0.8)


def test_distortion_curve_written_out():
    torch.manual_seed(0)
    model = create_model("resnet_pico", num_classes=4).eval()
    x = torch.randn(4, 3, 16, 16)
    layers = prunable_layers(model)
    # the stem and the classifier: layers whose pruning reaches the output (the blocks'
    # last norms start at zero, so pruning inside a block changes nothing at init)
    chosen = [layers[0], layers[-1]]
    curves = distortion_curves(model, [x], [0.0, 0.5], chosen)
    ref = model(x)
    m2 = copy.deepcopy(model)
    w = dict(m2.named_modules())[chosen[1][0]].weight
    k = w.numel() // 2
    thr = w.detach().abs().flatten().sort().values[k - 1]
    with torch.no_grad():
        w[w.abs() <= thr] = 0
    want = ((m2(x) - ref) ** 2).mean().item()
    assert want > 0
    assert curves[1, 1].item() == pytest.approx(want, rel=1e-4)
    assert curves[:, 0].tolist() == [0.0, 0.0]


def test_compressor_end_to_end():
    data = tiny_data()
    torch.manual_seed(0)
    model = create_model("resnet_pico", num_classes=4)
    comp = create_compressor(
        "rd_prune", {"sparsity": 0.6, "grid_steps": 6, "calibration_images": 16}
    )
    res = comp(model, tiny_context(data))
    assert res.info["sparsity"] >= 0.6
    rates = list(res.info["layer_sparsity"].values())
    assert max(rates) > min(rates)  # layer-adaptive, not uniform
    assert torch.isfinite(res.model(torch.randn(2, 3, 16, 16))).all()


def test_bad_sparsity():
    with pytest.raises(ValueError, match="sparsity"):
        create_compressor("rd_prune", {"sparsity": 1.2})(
            create_model("resnet_pico", num_classes=4), tiny_context(tiny_data())
        )
