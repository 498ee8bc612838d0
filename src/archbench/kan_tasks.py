"""Symbolic-regression data for the KAN-versus-MLP study.

*KAN: Kolmogorov-Arnold Networks* (Liu et al., 2024) and *KAN or MLP: A Fairer
Comparison* (Yu et al., 2024) fit closed-form functions on inputs drawn uniformly from
[-1, 1]^d. ``symbolic_regression_data(formula, n, seed)`` draws such a set,
deterministically from ``seed``; ``formula`` is a name from ``SYMBOLIC_FORMULAS`` or a
``(n_vars, function)`` pair whose function maps an (n, n_vars) tensor to (n,) values.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["SYMBOLIC_FORMULAS", "SymbolicFormula", "symbolic_regression_data"]


@dataclass(frozen=True)
class SymbolicFormula:
    n_vars: int
    fn: Callable[[torch.Tensor], torch.Tensor]
    expression: str


def _f(n_vars: int, expression: str):
    def deco(fn: Callable[[torch.Tensor], torch.Tensor]) -> SymbolicFormula:
        return SymbolicFormula(n_vars, fn, expression)

    return deco


@_f(2, "exp(sin(pi*x) + y^2)")
def _exp_sin(x: torch.Tensor) -> torch.Tensor:
    return torch.exp(torch.sin(math.pi * x[:, 0]) + x[:, 1].square())


@_f(2, "x*y")
def _product(x: torch.Tensor) -> torch.Tensor:
    return x[:, 0] * x[:, 1]


@_f(1, "sin(pi*x)")
def _sin(x: torch.Tensor) -> torch.Tensor:
    return torch.sin(math.pi * x[:, 0])


@_f(2, "exp(sin(pi*x)) * cos(2*pi*y)")
def _exp_sin_cos(x: torch.Tensor) -> torch.Tensor:
    return torch.exp(torch.sin(math.pi * x[:, 0])) * torch.cos(2 * math.pi * x[:, 1])


@_f(4, "exp((sin(pi*(x1^2 + x2^2)) + sin(pi*(x3^2 + x4^2))) / 2)")
def _exp_sin_4d(x: torch.Tensor) -> torch.Tensor:
    s = x.square()
    return torch.exp(
        0.5 * (torch.sin(math.pi * (s[:, 0] + s[:, 1])) + torch.sin(math.pi * (s[:, 2] + s[:, 3])))
    )


@_f(100, "exp(mean_i sin(pi*x_i/2)^2)")
def _exp_mean_sin_100d(x: torch.Tensor) -> torch.Tensor:
    return torch.exp(torch.sin(0.5 * math.pi * x).square().mean(1))


SYMBOLIC_FORMULAS: dict[str, SymbolicFormula] = {
    "exp_sin": _exp_sin,
    "product": _product,
    "sin": _sin,
    "exp_sin_cos": _exp_sin_cos,
    "exp_sin_4d": _exp_sin_4d,
    "exp_mean_sin_100d": _exp_mean_sin_100d,
}


def symbolic_regression_data(
    formula: str | tuple[int, Callable[[torch.Tensor], torch.Tensor]],
    n: int,
    seed: int = 0,
    noise: float = 0.0,
    x_range: tuple[float, float] = (-1.0, 1.0),
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` samples ``(x, y)``: x of shape (n, n_vars) uniform in ``x_range``, y of shape (n, 1).

    ``noise`` adds Gaussian noise of that standard deviation to y. The same arguments
    always give the same tensors.
    """
    if isinstance(formula, str):
        if formula not in SYMBOLIC_FORMULAS:
            raise ValueError(
                f"unknown formula {formula!r}; choose one of {sorted(SYMBOLIC_FORMULAS)} "
                "or pass (n_vars, function)"
            )
        spec = SYMBOLIC_FORMULAS[formula]
        n_vars, fn = spec.n_vars, spec.fn
    elif isinstance(formula, tuple) and len(formula) == 2 and callable(formula[1]):
        n_vars, fn = int(formula[0]), formula[1]
        if n_vars < 1:
            raise ValueError(f"n_vars must be >= 1, got {n_vars}")
    else:
        raise TypeError(
            f"formula must be a name from SYMBOLIC_FORMULAS or (n_vars, function), got {formula!r}"
        )
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    lo, hi = float(x_range[0]), float(x_range[1])
    if not hi > lo:
        raise ValueError(f"x_range must be (low, high) with low < high, got {x_range}")
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, n_vars, generator=gen) * (hi - lo) + lo
    y = fn(x)
    if y.numel() != n:
        raise ValueError(f"the formula must give one value per sample, got shape {tuple(y.shape)}")
    y = y.reshape(n, 1).to(torch.float32)
    if noise > 0:
        y = y + noise * torch.randn(n, 1, generator=gen)
    return x, y
