"""GEDI: the energy, the three terms by hand, Langevin sampling on a known energy."""

from __future__ import annotations

import math
import types

import pytest
import torch

from archbench.data import load_dataset
from archbench.models import create_model
from archbench.ssl.gedi import GEDI, energy, gedi_terms, sgld_sample
from archbench.train import create_task, fit, load_recipe


def test_energy_is_minus_logsumexp():
    logits = torch.tensor([[0.0, math.log(3.0)], [1.0, 1.0]])
    assert torch.allclose(energy(logits), torch.tensor([-math.log(4.0), -(1 + math.log(2.0))]))


def test_terms_by_hand():
    la = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])  # p = (.5, .5), (.75, .25)
    lb = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])  # p = (.75, .25), (.5, .5)
    ed = torch.tensor([1.0, 2.0])
    em = torch.tensor([0.5, 4.5])
    t = gedi_terms(la, lb, ed, em)
    ce = lambda p, q: -sum(a * math.log(b) for a, b in zip(p, q))  # noqa: E731
    inv = (ce((0.75, 0.25), (0.5, 0.5)) + ce((0.5, 0.5), (0.75, 0.25))) / 2  # sample 1
    inv += (ce((0.5, 0.5), (0.75, 0.25)) + ce((0.75, 0.25), (0.5, 0.5))) / 2  # sample 2
    assert float(t["inv"]) == pytest.approx(inv / 2, rel=1e-5)
    mean_p = [(0.5 + 0.75 + 0.75 + 0.5) / 4, (0.5 + 0.25 + 0.25 + 0.5) / 4]
    kl = sum(0.5 * math.log(0.5 / m) for m in mean_p)
    assert float(t["prior"]) == pytest.approx(kl, abs=1e-6)
    assert float(t["gen"]) == pytest.approx(1.5 - 2.5)
    # a collapsed assignment (every sample in cluster 0) is penalized by the prior term
    collapsed = gedi_terms(torch.tensor([[9.0, 0.0]] * 2), torch.tensor([[9.0, 0.0]] * 2), ed, em)
    assert float(collapsed["prior"]) > 1.0 > float(t["prior"])


def test_langevin_without_noise_descends_a_quadratic_energy():
    x0 = torch.tensor([[2.0, -4.0]])
    out = sgld_sample(lambda x: 0.5 * x.pow(2).sum(1), x0, steps=3, lr=0.25, noise=0.0)
    assert torch.allclose(out, x0 * 0.75**3)
    noisy = sgld_sample(lambda x: 0.5 * x.pow(2).sum(1), x0, steps=3, lr=0.25, noise=0.1)
    assert not torch.allclose(noisy, out)


def test_step_refreshes_the_replay_buffer_and_gives_gradients():
    data = load_dataset("shapes:n_train=16,n_val=8,n_test=8,img_size=16")
    model = create_model("resnet_pico", num_classes=data.num_classes, img_size=16)
    task = GEDI(clusters=4, proj_dim=16, sgld_steps=2, buffer_size=8)
    task.setup(model, data, load_recipe("cpu-fast"))
    assert task.buffer.shape == (8, 3, 16, 16)
    assert float(task.buffer.min()) >= -1 and float(task.buffer.max()) <= 1
    before = task.buffer.clone()
    out = task.step(
        types.SimpleNamespace(raw=data.train.images[:6]),
        types.SimpleNamespace(model=model, data=data),
    )
    assert not torch.equal(task.buffer, before)
    out["loss"].backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())
    assert set(out) >= {"loss", "gen", "inv", "prior"}
    with pytest.raises(ValueError, match="clusters"):
        create_task("gedi", {"clusters": 1})


def test_fit_runs(tmp_path):
    data = load_dataset("shapes:n_train=32,n_val=16,n_test=16,img_size=16")
    model = create_model("resnet_pico", num_classes=data.num_classes, img_size=16)
    recipe = load_recipe("cpu-fast").replace(
        epochs=1,
        batch_size=16,
        warmup_epochs=0,
        task="gedi",
        task_args={"clusters": 4, "sgld_steps": 2, "buffer_size": 64},
    )
    res = fit(model, data, recipe, tmp_path, progress=False)
    assert res.status == "completed"
    assert math.isfinite(res.history[-1]["val_loss"])
