"""TAS: channel-wise interpolation, the width distribution, the cost loss, search + KD."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from _prune_helpers import tiny_context, tiny_data
from torch.utils.flop_counter import FlopCounterMode

from archbench import create_model
from archbench.compress import create_compressor
from archbench.compress.structured import prune_structured
from archbench.compress.tas import (
    TASSearchTask,
    WidthSearch,
    _MacModel,
    add_width_search,
    channel_wise_interpolation,
    flop_loss,
    remove_width_search,
)


def test_cwi_by_hand():
    x = torch.arange(4.0).view(1, 4, 1, 1) * torch.ones(1, 4, 2, 2)
    out = channel_wise_interpolation(x, 2)
    assert out[0, :, 0, 0].tolist() == [0.5, 2.5]  # means of channels (0, 1) and (2, 3)
    assert torch.equal(channel_wise_interpolation(x, 4), x)


def test_flop_loss_pieces():
    e = torch.tensor(0.6)
    assert flop_loss(e, 0.7, 0.5, 0.05).item() == pytest.approx(torch.log(e).item())
    assert flop_loss(e, 0.4, 0.5, 0.05).item() == pytest.approx(-torch.log(e).item())
    assert flop_loss(e, 0.47, 0.5, 0.05).item() == 0.0


def test_width_search_eval_runs_the_most_probable_width():
    ws = WidthSearch(nn.ReLU(), 10)
    assert ws.choices == [3, 4, 5, 6, 7, 8, 9, 10]
    with torch.no_grad():
        ws.alpha[2] = 5.0
    ws.eval()
    x = torch.randn(2, 10, 3, 3)
    out = ws(x)
    assert torch.equal(out[:, :5], torch.relu(x[:, :5])) and (out[:, 5:] == 0).all()
    expected = sum(c * p for c, p in zip(ws.choices, ws.alpha.softmax(0).tolist()))
    assert ws.expected_width().item() == pytest.approx(expected, rel=1e-6)


def test_mac_model_matches_the_pruned_network():
    torch.manual_seed(0)
    model = create_model("resnet_pico", num_classes=4).eval()
    searchers = add_width_search(model)
    with torch.no_grad():
        for i, s in enumerate(searchers):
            s.alpha[i % len(s.choices)] = 9.0
    macs = _MacModel(model, torch.zeros(1, 3, 16, 16))
    predicted = macs.total(lambda ws: ws.best_width())
    widths = remove_width_search(model)
    full = {n: dict(model.named_modules())[n].out_channels for n in widths}
    ratios = {n: 1 - w / full[n] for n, w in widths.items() if w < full[n]}
    pruned, _ = prune_structured(model, torch.zeros(1, 3, 16, 16), 0.0, layer_ratios=ratios)
    assert [pruned.get_submodule(n).out_channels for n in widths] == list(widths.values())
    with FlopCounterMode(display=False) as fc:
        pruned(torch.zeros(1, 3, 16, 16))
    assert predicted == pytest.approx(fc.get_total_flops() / 2, rel=1e-6)


def test_search_step_reaches_the_distribution():
    data = tiny_data()
    torch.manual_seed(0)
    model = create_model("resnet_pico", num_classes=4).train()
    task = TASSearchTask(flop_ratio=0.3)

    class R:
        epochs = 2

    task.setup(model, data, R)

    class B:
        images = torch.randn(4, 3, 16, 16)
        labels = torch.tensor([0, 1, 2, 3])
        targets = nn.functional.one_hot(labels, 4).float()

    class S:
        pass

    S.model = model
    out = task.step(B, S)
    # no width choice reaches 0.3 of the MACs (only inner widths shrink): log E[MAC ratio]
    _, current, expected = task.cost()
    assert current > 0.3
    assert out["flop_loss"].item() == pytest.approx(torch.log(expected).item(), rel=1e-5)
    out["loss"].backward()
    assert all(s.alpha.grad is not None and s.alpha.grad.abs().sum() > 0 for s in task.searchers)


def test_tas_end_to_end(tmp_path):
    data = tiny_data()
    torch.manual_seed(0)
    model = create_model("resnet_pico", num_classes=4)
    before = sum(p.numel() for p in model.parameters())
    res = create_compressor("tas", {"flop_ratio": 0.5, "search_epochs": 1, "kd_epochs": 1})(
        model, tiny_context(data, tmp_path)
    )
    assert sum(p.numel() for p in res.model.parameters()) < before
    assert all(w < 128 for w in res.info["widths"].values())
    assert res.model.eval()(torch.randn(2, 3, 16, 16)).shape == (2, 4)


def test_bad_input():
    with pytest.raises(ValueError, match="flop_ratio"):
        TASSearchTask(flop_ratio=1.5)
    with pytest.raises(ValueError, match="residual block"):
        add_width_search(create_model("vit_pico", num_classes=4))


@pytest.mark.parametrize("args", [{"flop_ratio": 0.0}, {"flop_ratio": 1.0}, {"kd_epochs": -1}])
def test_compressor_refuses_bad_arguments_before_work(args):
    with pytest.raises(ValueError):
        create_compressor("tas", args)
