"""Symbolic-regression data (kan_tasks.py)."""

from __future__ import annotations

import math

import pytest
import torch

from archbench.kan_tasks import SYMBOLIC_FORMULAS, symbolic_regression_data


def test_exp_sin_values_and_determinism():
    x, y = symbolic_regression_data("exp_sin", 500, seed=3)
    assert x.shape == (500, 2) and y.shape == (500, 1)
    assert x.min() >= -1 and x.max() <= 1
    torch.testing.assert_close(y[:, 0], torch.exp(torch.sin(math.pi * x[:, 0]) + x[:, 1] ** 2))
    x2, y2 = symbolic_regression_data("exp_sin", 500, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, _ = symbolic_regression_data("exp_sin", 500, seed=4)
    assert not torch.equal(x, x3)


def test_every_formula_and_custom_callable():
    for name, spec in SYMBOLIC_FORMULAS.items():
        x, y = symbolic_regression_data(name, 8)
        assert x.shape == (8, spec.n_vars) and torch.isfinite(y).all()
    x, y = symbolic_regression_data((3, lambda t: t.sum(1)), 10, x_range=(0.0, 2.0))
    assert x.min() >= 0 and x.max() <= 2
    torch.testing.assert_close(y[:, 0], x.sum(1))
    _, noisy = symbolic_regression_data("product", 2000, noise=0.1)
    xs, clean = symbolic_regression_data("product", 2000)
    assert 0.08 < (noisy - clean).std() < 0.12


def test_bad_input():
    with pytest.raises(ValueError, match="exp_sin"):
        symbolic_regression_data("exp(x)", 10)
    with pytest.raises(ValueError, match="n must"):
        symbolic_regression_data("sin", 0)
    with pytest.raises(ValueError, match="one value per sample"):
        symbolic_regression_data((2, lambda t: t), 5)
