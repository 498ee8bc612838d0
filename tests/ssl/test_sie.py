"""SIE: the hypernetwork predictor, VICReg terms and the split loss against hand formulas."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from archbench.data import load_dataset
from archbench.models import create_model
from archbench.ssl.sie import (
    SIE,
    HyperPredictor,
    rotation_parameters,
    sie_loss,
    vicreg_regularizers,
)
from archbench.train import fit, load_recipe


def test_hyper_predictor_applies_the_generated_matrix():
    torch.manual_seed(0)
    pred = HyperPredictor(dim=3, latent=4)
    e = torch.randn(2, 3)
    t = torch.randn(2, 4)
    a = pred.hypernet.weight  # (9, 4): W(t) = reshape(A t)
    for i in range(2):
        w = (a @ t[i]).view(3, 3)
        assert torch.allclose(pred(e, t)[i], w @ e[i], atol=1e-6)
    # a different transformation gives a different prediction (no collapse to invariance)
    assert not torch.allclose(pred(e, t), pred(e, -t))


def test_rotation_parameters():
    p = rotation_parameters(torch.tensor([0, 1, 2, 3]))
    expected = [[1, 0, 1, 0], [0, 1, -1, 0], [-1, 0, 1, 0], [0, -1, -1, 0]]
    assert torch.allclose(p, torch.tensor(expected, dtype=torch.float), atol=1e-6)


def test_vicreg_terms_match_numpy():
    z = torch.randn(6, 4, generator=torch.Generator().manual_seed(0)) * 0.5
    std_term, cov_term = vicreg_regularizers(z)
    a = z.numpy().astype(np.float64)
    a = a - a.mean(0)
    std = np.sqrt(a.var(0, ddof=1) + 1e-4)
    cov = a.T @ a / 5
    off = cov - np.diag(np.diag(cov))
    assert float(std_term) == pytest.approx(np.maximum(0, 1 - std).mean(), rel=1e-5)
    assert float(cov_term) == pytest.approx((off**2).sum() / 4, rel=1e-5)


def test_sie_loss_is_the_weighted_sum_with_official_coefficients():
    g = torch.Generator().manual_seed(1)
    ix, iy, ex, ey, py = (torch.randn(8, d, generator=g) for d in (3, 3, 2, 2, 2))
    out = sie_loss(ix, iy, ex, ey, py)
    inv = float(((ix - iy) ** 2).mean())
    equi = float(((py - ey) ** 2).mean())
    sx, cx = vicreg_regularizers(torch.cat([ix, ex], 1))
    sy, cy = vicreg_regularizers(torch.cat([iy, ey], 1))
    sp, _ = vicreg_regularizers(py)
    total = 10 * inv + 4.5 * 10 * equi + 10 * (sx / 2 + sy / 2) + 10 * sp / 2 + (cx + cy)
    assert float(out["loss"]) == pytest.approx(float(total), rel=1e-5)
    assert float(out["inv"]) == pytest.approx(inv, rel=1e-5)
    assert float(out["equi"]) == pytest.approx(equi, rel=1e-5)


def test_split_and_views():
    data = load_dataset("shapes:n_train=16,n_val=8,n_test=8,img_size=16")
    model = create_model("resnet_pico", num_classes=data.num_classes, img_size=16)
    task = SIE(equi=32, expander_width=64)
    task.setup(model, data, load_recipe("cpu-fast"))
    assert task.split == 128 - 32
    assert task.trainable["expander_inv"][0].in_features == 96
    assert task.trainable["expander_equi"][0].in_features == 32
    assert task.trainable["predictor"].dim == round(64 * 32 / 128)
    torch.manual_seed(0)
    raw = data.train.images[:4]
    vx, vy, t = task.two_views(raw, data)
    assert vx.shape == vy.shape == (4, 3, 16, 16) and t.shape == (4, 4)
    # the relative angle's parameters lie on the unit circle twice
    assert torch.allclose(t[:, :2].norm(dim=1), torch.ones(4))
    assert torch.allclose(t[:, 2:].norm(dim=1), torch.ones(4))
    # multiples of 90 degrees: every parameter is -1, 0 or 1
    assert torch.allclose(t, t.round(), atol=1e-6)
    out = task.step(types.SimpleNamespace(raw=raw), types.SimpleNamespace(model=model, data=data))
    assert torch.isfinite(out["loss"]) and out["loss"].requires_grad
    with pytest.raises(ValueError, match="equi"):
        SIE(equi=128).setup(model, data, load_recipe("cpu-fast"))


def test_fit_runs(tmp_path):
    data = load_dataset("shapes:n_train=32,n_val=16,n_test=16,img_size=16")
    model = create_model("resnet_pico", num_classes=data.num_classes, img_size=16)
    recipe = load_recipe("cpu-fast").replace(
        epochs=1, batch_size=16, warmup_epochs=0, task="sie", task_args={"expander_width": 64}
    )
    res = fit(model, data, recipe, tmp_path, progress=False)
    assert res.status == "completed"
    assert np.isfinite(res.history[-1]["val_loss"])


def test_short_pretraining_beats_random_init_on_a_linear_probe(tmp_path):
    from archbench.ssl.probe import probe

    data = load_dataset("shapes:num_classes=5,n_train=512,n_val=64,n_test=256,img_size=16", seed=0)

    def fresh():
        torch.manual_seed(0)
        return create_model("resnet_pico", num_classes=data.num_classes, img_size=16)

    def linear(model):
        return probe(model, data, kind="linear", weight_decays=(1e-4, 1e-2))["linear"]["acc"]

    baseline = linear(fresh())
    model = fresh()
    recipe = load_recipe("cpu-fast").replace(
        epochs=3,
        batch_size=64,
        warmup_epochs=0,
        lr=5e-3,
        seed=0,
        task="sie",
        task_args={"expander_width": 128},
    )
    assert fit(model, data, recipe, tmp_path, progress=False).status == "completed"
    assert linear(model) > baseline + 0.03
