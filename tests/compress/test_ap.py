"""AP: dead neuron rate, the selection of stagnant negative weights, pruning cycles."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from _prune_helpers import tiny_context, tiny_data

from archbench import create_model
from archbench.compress import create_compressor
from archbench.compress.ap import APPruneTask, ap_select, dead_neuron_rate, magnitude_select


def test_dead_neuron_rate_by_hand():
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
        net[0].bias.zero_()
    x = torch.tensor([[1.0, -1.0], [2.0, 3.0]])
    # outputs: [1, 0, 0] and [2, 3, 0] -> 3 zeros of 6
    assert dead_neuron_rate(net, x) == pytest.approx(0.5)


def test_magnitude_and_ap_selection_by_hand():
    w = [torch.tensor([0.5, -0.2, -0.9, 0.05]), torch.tensor([-0.3, 0.8, -0.6, 0.1])]
    prev = [torch.tensor([0.4, -0.25, -0.1, 0.0]), torch.tensor([-0.31, 0.7, -0.5, 0.2])]
    masks = [torch.ones(4, dtype=torch.bool), torch.tensor([True, True, True, False])]
    # 7 alive weights: 25% -> 1 removed, the smallest alive magnitude (0.05)
    m = magnitude_select(w, masks, 25.0)
    assert m[0].tolist() == [True, True, True, False] and m[1].tolist() == masks[1].tolist()
    # alive negatives and their moves: -0.2 (0.05), -0.9 (0.8), -0.3 (0.01), -0.6 (0.1)
    a = ap_select(w, prev, m, 2)  # the two that moved least: -0.3 and -0.2
    assert a[0].tolist() == [True, False, True, False]
    assert a[1].tolist() == [False, True, True, False]


def test_task_cycles_prune_and_masks_hold(tmp_path):
    from _prune_helpers import tiny_recipe

    from archbench.train import fit

    data = tiny_data()
    torch.manual_seed(0)
    model = create_model("resnet_pico", num_classes=4)
    task = APPruneTask(prune_percent=30.0, ap_percent=5.0, cycle_epochs=1)
    recipe = tiny_recipe(3).replace(task="ap_prune", task_args=task.args)
    result = fit(model, data, recipe, tmp_path / "run", task=task, progress=False)
    sp = [h["sparsity"] for h in result.history]
    # epoch 0 dense; each later epoch starts by removing 30% of the remaining weights
    assert sp[0] == pytest.approx(0.0, abs=1e-3)
    assert sp[1] == pytest.approx(0.3, abs=0.01)
    assert sp[2] == pytest.approx(1 - 0.7**2, abs=0.01)
    assert all(0 <= h["dnr"] <= 1 for h in result.history)
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
    for p, m in zip(weights, task.masks[: len(weights)]):
        assert (p[~m] == 0).all()  # pruned weights stayed zero through the optimizer steps


def test_compressor_end_to_end(tmp_path):
    data = tiny_data()
    torch.manual_seed(0)
    res = create_compressor("ap", {"cycles": 1, "prune_percent": 40.0})(
        create_model("resnet_pico", num_classes=4), tiny_context(data, tmp_path)
    )
    assert res.info["sparsity"] == pytest.approx(0.4, abs=0.02)
    assert 0 <= res.info["dnr_after"] <= 1


def test_bad_arguments():
    with pytest.raises(ValueError, match="ap_percent"):
        APPruneTask(prune_percent=10.0, ap_percent=12.0)
    with pytest.raises(ValueError, match="prune_percent"):
        APPruneTask(prune_percent=100.0)


@pytest.mark.parametrize("args", [{"cycles": 0}, {"prune_percent": 120.0}, {"ap_percent": 30.0}])
def test_compressor_refuses_bad_arguments_before_work(args):
    with pytest.raises(ValueError):
        create_compressor("ap", args)
