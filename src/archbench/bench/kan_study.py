"""The fair KAN-vs-MLP study: symbolic regression at matched parameters and FLOPs.

*KAN: Kolmogorov-Arnold Networks* (Liu et al., 2024) fits closed-form formulas with
small B-spline KANs (e.g. ``[2, 5, 1]``) trained full-batch with L-BFGS while the
spline grid is extended (3 -> 5 -> 10 intervals); *KAN or MLP: A Fairer Comparison*
(Yu et al., 2024) insists that the MLP it is compared with has the same number of
parameters or the same FLOPs. :func:`symbolic_study` does both: for every formula and
seed it fits the KAN, then an MLP whose width is chosen so that its parameters match the
KAN's final parameter count (within 5%), and one whose FLOPs match the KAN's FLOPs, all
with the same optimizer, steps and data, and reports test RMSE mean and std over seeds.

FLOPs per sample are counted analytically for the implementation archbench runs: every
matrix product ``2 * in * out`` (the KAN's spline product has ``in * n_basis`` inputs),
plus the basis evaluation, which an ordinary FLOP counter of matrix products misses: per
input feature, the Cox-de Boor recursion of order ``k`` on ``G`` intervals costs
``2 * (G + 2k)`` comparisons for order 0 and about 7 FLOPs per basis value of each
higher order, and SiLU about 4 FLOPs (the MLP's activations are counted the same way).
This is an estimate of our vectorised layer, not of the per-edge evaluation in the
original KAN code.

:func:`compare_verdicts` turns two result rows into "KAN wins / loses / within noise"
with Welch's t test over seeds at the 5% level (:func:`archbench.bench.leaderboard.within_noise`).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from ..kan_tasks import SYMBOLIC_FORMULAS, symbolic_regression_data
from ..layers.kan import KANLinear
from .leaderboard import within_noise

__all__ = [
    "STUDY_FORMULAS",
    "SymbolicConfig",
    "compare_verdicts",
    "config_key",
    "fit_regressor",
    "kan_flops",
    "kan_regressor",
    "match_mlp",
    "mlp_flops",
    "mlp_regressor",
    "n_params",
    "symbolic_study",
]

# formula name -> KAN widths (the KAN paper's shapes for these formulas)
STUDY_FORMULAS: dict[str, tuple[int, ...]] = {
    "product": (2, 2, 1),
    "exp_sin": (2, 5, 1),
    "sin_cos": (2, 5, 1),
    "exp_sin_4d": (4, 4, 2, 1),
}

_EXTRA = {
    # not in kan_tasks.SYMBOLIC_FORMULAS: sin(pi*x) + cos(pi*y)
    "sin_cos": (
        2,
        lambda x: torch.sin(math.pi * x[:, 0]) + torch.cos(math.pi * x[:, 1]),
        "sin(pi*x) + cos(pi*y)",
    ),
}


def _formula(name: str) -> tuple[Any, str]:
    if name in _EXTRA:
        n, fn, expr = _EXTRA[name]
        return (n, fn), expr
    if name in SYMBOLIC_FORMULAS:
        return name, SYMBOLIC_FORMULAS[name].expression
    raise ValueError(
        f"unknown formula {name!r}; choose one of {sorted(set(SYMBOLIC_FORMULAS) | set(_EXTRA))}"
    )


# ----- models and their sizes ----------------------------------------------------------


class _KANRegressor(nn.Module):
    def __init__(self, widths: tuple[int, ...], grid_size: int, spline_order: int) -> None:
        super().__init__()
        self.widths = tuple(widths)
        self.layers = nn.ModuleList(
            KANLinear(a, b, basis="bspline", grid_size=grid_size, spline_order=spline_order)
            for a, b in zip(widths[:-1], widths[1:])
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    @torch.no_grad()
    def extend_grid(self, x: torch.Tensor, grid_size: int) -> None:
        """The KAN paper's grid extension, layer by layer, on the current layer inputs."""
        for layer in self.layers:
            layer.update_grid(x)
            layer.extend_grid(grid_size, x)
            x = layer(x)


def kan_regressor(
    widths: tuple[int, ...], grid_size: int = 5, spline_order: int = 3
) -> _KANRegressor:
    """A B-spline KAN of ``widths`` (a stack of ``KANLinear`` with SiLU residual base)."""
    if len(widths) < 2 or any(w < 1 for w in widths):
        raise ValueError(f"widths must list at least two positive widths, got {widths}")
    return _KANRegressor(tuple(widths), grid_size, spline_order)


def mlp_regressor(n_in: int, width: int, depth: int, act: str = "silu") -> nn.Sequential:
    """``depth`` hidden layers of ``width`` units with ``act``, then a linear output."""
    acts = {"silu": nn.SiLU, "tanh": nn.Tanh, "gelu": nn.GELU, "relu": nn.ReLU}
    if act not in acts:
        raise ValueError(f"unknown act {act!r}; choose one of {sorted(acts)}")
    if width < 1 or depth < 1:
        raise ValueError(f"width and depth must be >= 1, got {width}, {depth}")
    layers: list[nn.Module] = []
    d = n_in
    for _ in range(depth):
        layers += [nn.Linear(d, width), acts[act]()]
        d = width
    layers.append(nn.Linear(d, 1))
    return nn.Sequential(*layers)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _basis_flops(grid_size: int, order: int) -> int:
    flops = 2 * (grid_size + 2 * order)  # order-0 indicator: two comparisons per interval
    for j in range(1, order + 1):
        flops += 7 * (grid_size + 2 * order - j)
    return flops


_ACT_FLOPS = 4  # SiLU / tanh / GELU per element, a conventional estimate


def kan_flops(widths: tuple[int, ...], grid_size: int, spline_order: int = 3) -> int:
    """FLOPs of one sample through a B-spline KAN of ``widths`` (see the module docstring)."""
    total = 0
    n_basis = grid_size + spline_order
    for a, b in zip(widths[:-1], widths[1:]):
        total += a * (_basis_flops(grid_size, spline_order) + _ACT_FLOPS)
        total += 2 * a * n_basis * b + 2 * a * b + b  # spline matmul, base matmul, the sum
    return total


def mlp_flops(n_in: int, width: int, depth: int) -> int:
    """FLOPs of one sample through :func:`mlp_regressor` (matmuls, biases, activations)."""
    total, d = 0, n_in
    for _ in range(depth):
        total += 2 * d * width + width + _ACT_FLOPS * width
        d = width
    return total + 2 * d + 1


def _mlp_params(n_in: int, width: int, depth: int) -> int:
    return (n_in + 1) * width + (depth - 1) * (width + 1) * width + width + 1


def match_mlp(
    n_in: int,
    target: float,
    kind: str = "params",
    depths: tuple[int, ...] = (2, 1, 3),
    tolerance: float = 0.05,
) -> tuple[int, int, float]:
    """(width, depth, achieved) of the MLP whose params (or FLOPs) are nearest ``target``.

    Depths are tried in order; the first whose best width is within ``tolerance`` wins
    (two hidden layers by default, as in the fairer-comparison paper's small MLPs).
    """
    if kind not in ("params", "flops"):
        raise ValueError(f"kind must be 'params' or 'flops', got {kind!r}")
    count = _mlp_params if kind == "params" else mlp_flops
    best = None
    for depth in depths:
        w = min(
            range(1, 4097),
            key=lambda w: abs(count(n_in, w, depth) - target),
        )
        achieved = count(n_in, w, depth)
        cand = (w, depth, float(achieved))
        if abs(achieved / target - 1) <= tolerance:
            return cand
        if best is None or abs(achieved / target - 1) < abs(best[2] / target - 1):
            best = cand
    assert best is not None
    return best


# ----- fitting --------------------------------------------------------------------------


@dataclass
class SymbolicConfig:
    """How every regressor is trained: full-batch L-BFGS, the same steps for KAN and MLP.

    A step is one L-BFGS call of up to 10 iterations with strong-Wolfe line search.
    """

    n_train: int = 1000
    n_test: int = 1000
    steps: int = 200
    grids: tuple[int, ...] = (3, 5, 10)
    spline_order: int = 3
    mlp_act: str = "silu"
    lr: float = 1.0
    threads: int = 1
    formulas: dict[str, tuple[int, ...]] = field(default_factory=lambda: dict(STUDY_FORMULAS))


def _lbfgs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float) -> None:
    opt = torch.optim.LBFGS(
        model.parameters(),
        lr=lr,
        max_iter=10,
        history_size=10,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-32,
        tolerance_change=1e-32,
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (model(x) - y).square().mean()
        loss.backward()
        return loss

    for _ in range(steps):
        loss = opt.step(closure)
        if not bool(torch.isfinite(loss)):
            raise FloatingPointError("loss is not finite")


def _rmse(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x) - y).square().mean().sqrt())


def fit_regressor(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    steps: int,
    grids: tuple[int, ...] | None = None,
    lr: float = 1.0,
) -> dict[str, float]:
    """Train ``model`` full-batch with L-BFGS; a KAN with ``grids`` is trained on each grid
    in turn for ``steps / len(grids)`` steps, the grid extended in between. Returns the
    train and test RMSE and the training time."""
    t0 = time.perf_counter()
    if isinstance(model, _KANRegressor) and grids and len(grids) > 1:
        per = max(1, steps // len(grids))
        for i, g in enumerate(grids):
            if i > 0:
                model.extend_grid(x, g)
            _lbfgs(model, x, y, per, lr)
    else:
        _lbfgs(model, x, y, steps, lr)
    train_time = time.perf_counter() - t0
    return {
        "train_rmse": _rmse(model, x, y),
        "test_rmse": _rmse(model, x_test, y_test),
        "train_time_s": train_time,
    }


def _fit_one(formula: str, seed: int, cfg: SymbolicConfig) -> list[dict[str, Any]]:
    spec, expr = _formula(formula)
    widths = cfg.formulas[formula]
    x, y = symbolic_regression_data(spec, cfg.n_train, seed=1000 + seed)
    xt, yt = symbolic_regression_data(spec, cfg.n_test, seed=999_983)
    if x.shape[1] != widths[0]:
        raise ValueError(f"{formula}: KAN widths {widths} do not start with {x.shape[1]} inputs")
    g_final = cfg.grids[-1]
    rows = []

    torch.manual_seed(seed)
    kan = kan_regressor(widths, cfg.grids[0], cfg.spline_order)
    res = fit_regressor(kan, x, y, xt, yt, cfg.steps, cfg.grids, cfg.lr)
    kan_p = n_params(kan)
    kan_f = kan_flops(widths, g_final, cfg.spline_order)
    rows.append(
        dict(
            formula=formula,
            expression=expr,
            model="kan",
            arch=f"KAN {list(widths)}, B-spline k={cfg.spline_order}, grids {list(cfg.grids)}",
            seed=seed,
            params=kan_p,
            flops=kan_f,
            **res,
        )
    )
    for kind, target in (("params", kan_p), ("flops", kan_f)):
        width, depth, _ = match_mlp(widths[0], target, kind)
        torch.manual_seed(seed)
        mlp = mlp_regressor(widths[0], width, depth, cfg.mlp_act)
        res = fit_regressor(mlp, x, y, xt, yt, cfg.steps, None, cfg.lr)
        rows.append(
            dict(
                formula=formula,
                expression=expr,
                model=f"mlp@{kind}",
                arch=f"MLP {widths[0]}-{'-'.join([str(width)] * depth)}-1 {cfg.mlp_act}",
                seed=seed,
                params=n_params(mlp),
                flops=mlp_flops(widths[0], width, depth),
                **res,
            )
        )
    return rows


def _summarise(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["formula"], r["model"]), []).append(r)
    rows = []
    for (formula, model), rs in groups.items():
        row: dict[str, Any] = {
            "formula": formula,
            "expression": rs[0]["expression"],
            "model": model,
            "arch": rs[0]["arch"],
            "n": len(rs),
            "params": rs[0]["params"],
            "flops": rs[0]["flops"],
        }
        for key in ("test_rmse", "train_rmse", "train_time_s"):
            vals = [r[key] for r in rs]
            row[key] = statistics.fmean(vals)
            row[f"{key}_std"] = statistics.stdev(vals) if len(vals) > 1 else None
        rows.append(row)
    return rows


def compare_verdicts(
    kan: dict[str, Any], other: dict[str, Any], key: str, higher_is_better: bool
) -> str:
    """'KAN wins' / 'KAN loses' / 'within noise' / 'noise unknown (1 seed)' on ``key``."""
    tie = within_noise(kan, other, key)
    if tie is None:
        return "noise unknown (1 seed)"
    if tie:
        return "within noise"
    better = kan[key] > other[key] if higher_is_better else kan[key] < other[key]
    return "KAN wins" if better else "KAN loses"


def config_key(cfg: SymbolicConfig) -> str:
    """A short hash of everything in ``cfg`` that changes a fit's result."""
    import hashlib
    import json
    from dataclasses import asdict

    d = asdict(cfg)
    d.pop("threads")
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def symbolic_study(
    seeds: int = 3,
    config: SymbolicConfig | None = None,
    formulas: list[str] | None = None,
    log: Any = print,
    previous: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Fit KAN and matched MLPs on every formula for ``seeds`` seeds.

    Returns ``records`` (one per fit), ``rows`` (mean and std over seeds per formula and
    model) and ``verdicts`` (KAN against the params-matched and the FLOPs-matched MLP).
    Fits found in ``previous`` records made with the same configuration are reused.
    """
    cfg = config or SymbolicConfig()
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    names = formulas or list(cfg.formulas)
    for name in names:
        if name not in cfg.formulas:
            raise ValueError(f"no KAN widths for formula {name!r}; known: {sorted(cfg.formulas)}")
    key = config_key(cfg)
    done: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in previous or []:
        if r.get("config_key") == key:
            done.setdefault((r["formula"], r["seed"]), []).append(r)
    prev = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    records: list[dict[str, Any]] = []
    try:
        for name in names:
            for seed in range(seeds):
                if len(done.get((name, seed), [])) == 3:
                    records += done[(name, seed)]
                    log(f"  {name:12s} seed {seed}: reused")
                    continue
                recs = _fit_one(name, seed, cfg)
                for r in recs:
                    r["config_key"] = key
                    log(
                        f"  {name:12s} seed {seed} {r['model']:10s} params {r['params']:6d} "
                        f"flops {r['flops']:7d} test RMSE {r['test_rmse']:.2e} ({r['train_time_s']:.1f} s)"
                    )
                records += recs
    finally:
        torch.set_num_threads(prev)
    rows = _summarise(records)
    verdicts = []
    by = {(r["formula"], r["model"]): r for r in rows}
    for name in names:
        kan = by[(name, "kan")]
        for kind in ("params", "flops"):
            other = by[(name, f"mlp@{kind}")]
            verdicts.append(
                {
                    "formula": name,
                    "matched": kind,
                    "kan_rmse": kan["test_rmse"],
                    "mlp_rmse": other["test_rmse"],
                    "verdict": compare_verdicts(kan, other, "test_rmse", higher_is_better=False),
                }
            )
    return {"records": records, "rows": rows, "verdicts": verdicts, "config": cfg}
