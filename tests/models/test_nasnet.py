"""NASNet-A: cells from genotype data, N @ penultimate-filters layout, ScheduledDropPath."""

from __future__ import annotations

import pytest
import torch

from archbench.models import create_model
from archbench.models.nasnet import (
    NASNET_A_NORMAL,
    NASNET_A_REDUCTION,
    OPS,
    NASNetCell,
    ScheduledDropPath,
    _FactorizedReduction,
)


def test_genotypes_are_five_blocks_with_the_papers_outputs():
    for blocks, _ in (NASNET_A_NORMAL, NASNET_A_REDUCTION):
        assert len(blocks) == 5
        assert all(op in OPS for pair in blocks for _, op in pair)
    assert NASNET_A_NORMAL[1] == (1, 2, 3, 4, 5, 6)
    assert NASNET_A_REDUCTION[1] == (3, 4, 5, 6)


@pytest.mark.parametrize(
    "genotype,reduction,ratio,mult",
    [(NASNET_A_NORMAL, False, 1, 6), (NASNET_A_REDUCTION, True, 2, 4)],
)
def test_cell_shapes(genotype, reduction, ratio, mult):
    cell = NASNetCell(genotype, 24, 20, 0, 0, 8, reduction).eval()
    out = cell(torch.randn(2, 24, 8, 8), torch.randn(2, 20, 8, 8))
    assert out.shape == (2, 8 * mult, 8 // ratio, 8 // ratio)
    assert cell.out_channels == 8 * mult


def test_cell_reduces_a_higher_resolution_previous_state():
    cell = NASNetCell(NASNET_A_NORMAL, 16, 12, 1, 0, 8, False).eval()
    assert isinstance(cell.prev[1], _FactorizedReduction)
    out = cell(torch.randn(1, 16, 4, 4), torch.randn(1, 12, 8, 8))
    assert out.shape == (1, 48, 4, 4)


def test_factorized_reduction_second_path_is_shifted():
    fr = _FactorizedReduction(1, 2).eval()
    with torch.no_grad():
        fr.path1.weight.fill_(1.0)
        fr.path2.weight.fill_(1.0)
    x = torch.arange(16.0).view(1, 1, 4, 4)
    out = (fr(x) - fr.bn.bias.view(1, -1, 1, 1)) * (fr.bn.running_var + fr.bn.eps).sqrt().view(
        1, -1, 1, 1
    )
    assert torch.allclose(out[0, 0], x[0, 0, ::2, ::2], atol=1e-4)
    assert torch.allclose(out[0, 1], x[0, 0, 1::2, 1::2], atol=1e-4)


def test_penultimate_widths():
    with torch.device("meta"):
        mobile = create_model("nasnet_a_mobile")
        large = create_model("nasnet_a_large")
    assert mobile.num_features == 1056 and large.num_features == 4032
    assert len(mobile.cells) == 2 + 12 + 2 and len(large.cells) == 2 + 18 + 2


def test_scheduled_drop_path_grows_with_depth_and_progress():
    model = create_model("nasnet_pico", drop_path_rate=0.4)
    drops = [m for m in model.modules() if isinstance(m, ScheduledDropPath)]
    first = model.cells[0].drops[0].max_rate
    last = model.cells[-1].drops[0].max_rate
    assert 0 < first < last <= 0.4 + 1e-9
    assert abs(last - 0.4) < 1e-9  # the last cell reaches the full rate
    model.set_drop_path_progress(0.25)
    assert all(abs(d.rate - 0.25 * d.max_rate) < 1e-12 for d in drops)
    with pytest.raises(ValueError, match="progress"):
        model.set_drop_path_progress(1.5)


def test_drop_path_only_acts_in_training_with_progress():
    torch.manual_seed(0)
    model = create_model("nasnet_pico", drop_path_rate=0.5, num_classes=4).train()
    x = torch.randn(4, 3, 32, 32)
    model.set_drop_path_progress(0.0)
    assert torch.equal(model(x), model(x))
    model.set_drop_path_progress(1.0)
    assert not torch.equal(model(x), model(x))


def test_fit_ramps_drop_path_from_zero_to_the_configured_rate(tmp_path):
    from archbench.data import load_dataset
    from archbench.train import Recipe, fit

    data = load_dataset("shapes:n_train=8,n_val=4,n_test=4,img_size=8,num_classes=4", seed=0)
    torch.manual_seed(0)
    model = create_model(
        "nasnet_pico", drop_path_rate=0.3, num_classes=4, img_size=8, num_filters=8
    )
    last = model.cells[-1].drops[0]
    assert last.max_rate == pytest.approx(0.3) and last.progress == 1.0  # built: full rate
    seen = []

    class Spy:
        def on_train_batch_start(self, state, batch):
            seen.append((state.step, last.rate, model.training))

    recipe = Recipe(epochs=2, batch_size=4, eval_batch_size=4, warmup_epochs=0.0)
    res = fit(model, data, recipe, tmp_path, callbacks=[Spy()], progress=False)
    assert res.steps == 4 and [s for s, _, _ in seen] == [0, 1, 2, 3]
    # TF-slim's schedule: rate = drop_path_rate * depth ratio * min(1, step / total steps)
    for step, rate, training in seen:
        assert training and rate == pytest.approx(0.3 * step / 4)
    assert seen[0][1] == 0.0
    assert last.rate == pytest.approx(0.3)  # after the last step: the configured rate
    assert all(
        abs(m.progress - 1.0) < 1e-12 for m in model.modules() if isinstance(m, ScheduledDropPath)
    )
