"""Matched budgets: rescale a model's width so that its parameters or MACs hit a target.

A comparison "at matched parameters" or "at matched FLOPs" trains every model at the
same size, so that differences are architecture, not capacity. Each model's width
arguments, the ones its class declares in ``width_args`` (see ``archbench.models``), are
multiplied by a common factor (integer widths rounded to a hardware-friendly multiple,
up or down, width multipliers scaled as they are), and the factor is searched until the
count, taken at the data's resolution, channels and classes, is within the tolerance of
the target. A class that declares no ``width_args`` cannot take such a budget.
Depth is left as the variant defines it. The chosen arguments are returned so that they
are recorded with every run and the model can be rebuilt from them.

Two budgets fix how long models train instead of how big they are: ``steps`` gives
every model the same number of optimizer steps, and ``compute`` the same training
compute, counted as forward MACs per image x images seen (the backward pass costs about
twice the forward for every model, so the factor is left out). Under ``compute`` each
model trains for ``round(target / (MACs x batch))`` steps.

:func:`count_for_budget` counts a model again from the exact arguments a run records
(``model.json``) and the shape of the data's own image tensors, independently of the
scaler's search; a comparison refuses to start when that count is off its target.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..models import create_model, get_model_card
from .measure import count_flops

__all__ = [
    "Budget",
    "ScaledModel",
    "count_for_budget",
    "parse_budget",
    "scale_to_budget",
    "steps_for_compute",
    "width_args_of",
]


@dataclass(frozen=True)
class Budget:
    """How every model in a comparison is given the same resources.

    kind: ``epochs`` (the recipe's epochs, or ``value``), ``time`` (wall-clock seconds of
    training per run), ``steps`` (the same number of optimizer steps), ``params`` (matched
    parameter count), ``flops`` (matched MACs of one forward pass at the data's
    resolution) or ``compute`` (matched training compute: forward MACs per image x images
    seen). ``reference`` names a model whose count is the target when no absolute
    ``value`` is given (for ``compute``: that model trained with the recipe's epochs).
    """

    kind: str
    value: float | None = None
    reference: str | None = None
    tolerance: float = 0.05

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "value": self.value,
            "reference": self.reference,
            "tolerance": self.tolerance,
        }


_SUFFIX = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}


def _number(text: str) -> float:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?\d+)?)\s*([kmg]?)\s*", text.lower())
    if not m:
        raise ValueError(f"cannot read {text!r} as a number (examples: 20, 1.5M, 300k, 2e6)")
    return float(m.group(1)) * _SUFFIX[m.group(2)]


def parse_budget(text: str | dict | None) -> Budget:
    """Read a budget: ``epochs``, ``epochs=10``, ``time=120``, ``steps=500``, ``params=1M``,
    ``flops=20M``, ``params=match:resnet_pico``, ``compute=2e12``,
    ``compute=match:resnet_pico`` (or the same as a mapping)."""
    if text is None:
        return Budget("epochs")
    if isinstance(text, dict):
        unknown = set(text) - {"kind", "value", "reference", "tolerance"}
        if unknown:
            raise ValueError(
                f"unknown budget key(s) {sorted(unknown)}; accepted: kind, value, reference, tolerance"
            )
        kind = text.get("kind")
        value = text.get("value")
        body = f"{kind}" if value is None else f"{kind}={value}"
        if text.get("reference"):
            body = f"{kind}=match:{text['reference']}"
        budget = parse_budget(body)
        return Budget(
            budget.kind, budget.value, budget.reference, float(text.get("tolerance", 0.05))
        )
    kinds = ("epochs", "time", "steps", "params", "flops", "compute")
    kind, _, rest = str(text).partition("=")
    kind = kind.strip().lower()
    if kind not in kinds:
        raise ValueError(
            f"unknown budget {text!r}; use one of: epochs[=N], time=SECONDS, steps=N, "
            "params=N|match:MODEL, flops=N|match:MODEL, compute=MACS_X_IMAGES|match:MODEL"
        )
    rest = rest.strip()
    if not rest:
        if kind != "epochs":
            raise ValueError(
                f"budget {kind!r} needs a value, e.g. {kind}=1M or {kind}=match:resnet_pico"
            )
        return Budget("epochs")
    if rest.startswith("match:"):
        if kind not in ("params", "flops", "compute"):
            raise ValueError(f"match: works with params, flops and compute budgets, not {kind!r}")
        ref = rest[len("match:") :]
        get_model_card(ref)  # fails with close matches for a typo
        return Budget(kind, None, ref)
    value = _number(rest)
    if value <= 0:
        raise ValueError(f"budget {kind} must be positive, got {rest}")
    if kind in ("epochs", "steps") and value != int(value):
        raise ValueError(f"{kind} must be a whole number, got {rest}")
    return Budget(kind, value)


def width_args_of(name: str, base_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """The declared width arguments of variant ``name`` (built with ``base_kwargs``) and their
    values; arguments whose value is not a width (e.g. ``None``: no such layer) are left out.

    Raises ``ValueError`` when the model's class declares no ``width_args``.
    """
    with torch.device("meta"):
        model = create_model(name, **(base_kwargs or {}))
    return _declared_widths(name, model)


def _declared_widths(name: str, model: torch.nn.Module) -> dict[str, Any]:
    declared = tuple(getattr(type(model), "width_args", ()))
    if not declared:
        raise ValueError(
            f"{name}: its class {type(model).__name__} declares no width_args, so it cannot be "
            "scaled to a params or flops budget; declare them (see CONTRIBUTING.md) or use an "
            "epochs or time budget"
        )
    args = getattr(model, "build_args", {})
    missing = [k for k in declared if k not in args]
    if missing:
        raise ValueError(
            f"{name}: width_args {missing} of {type(model).__name__} are not constructor arguments"
        )
    return {k: args[k] for k in declared if _is_width(args[k])}


def _is_width(v: Any) -> bool:
    """An int or float, or a non-empty (nested) tuple / list of them."""
    if isinstance(v, bool):
        return False
    if isinstance(v, (int, float)):
        return True
    return isinstance(v, (tuple, list)) and bool(v) and all(_is_width(i) for i in v)


def _scale(
    value: Any,
    mult: float,
    divisor: int,
    flipped: frozenset[tuple] = frozenset(),
    path: tuple = (),
) -> Any:
    """Multiply a width by ``mult``: ints to the nearest multiple of ``divisor`` (at least
    one ``divisor``; the other neighbouring multiple for the int at a ``path`` listed in
    ``flipped``), floats (width multipliers, RegNet's slope) exactly."""
    if isinstance(value, (tuple, list)):
        return type(value)(
            _scale(v, mult, divisor, flipped, (*path, i)) for i, v in enumerate(value)
        )
    if isinstance(value, float):
        return value * mult
    exact = value * mult / divisor
    steps = round(exact)
    if path in flipped:
        steps = math.floor(exact) if steps > exact else math.ceil(exact)
    return max(1, steps) * divisor


def _int_paths(value: Any, path: tuple) -> list[tuple]:
    """Paths (argument name, then tuple indices) of the int widths inside ``value``."""
    if isinstance(value, (tuple, list)):
        return [p for i, v in enumerate(value) for p in _int_paths(v, (*path, i))]
    return [] if isinstance(value, float) else [path]


def _leaf(value: Any, path: tuple) -> Any:
    for i in path[1:]:
        value = value[i]
    return value


def _measure(
    name: str, kwargs: dict[str, Any], kind: str, img_size: int, in_chans: int, num_classes: int
) -> float:
    """Parameters, or MACs of one image at ``img_size``, of ``name`` built for the data."""
    data = dict(num_classes=num_classes, in_chans=in_chans, img_size=img_size)
    with torch.device("meta"):
        model = create_model(name, **{**kwargs, **data})
    if kind == "params":
        return float(sum(p.numel() for p in model.parameters()))
    return count_flops(model, img_size)["macs"]


def count_for_budget(
    name: str, build_kwargs: dict[str, Any], kind: str, input_shape: tuple[int, int, int]
) -> float:
    """Parameters, or forward MACs of one image of ``input_shape`` (C, H, W), of ``name``
    built with exactly ``build_kwargs`` (the arguments a run records in ``model.json``).

    Independent of the scaler: the model is built on ``meta`` from the recorded
    arguments alone, and MACs are FlopCounterMode's FLOPs / 2 on an input of the given
    shape (take it from the data's image tensors, not from a size setting).
    """
    if kind not in ("params", "flops"):
        raise ValueError(f"count_for_budget counts params or flops, not {kind!r}")
    with torch.device("meta"):
        model = create_model(name, **build_kwargs)
    if kind == "params":
        return float(sum(p.numel() for p in model.parameters()))
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros((1, *input_shape), device="meta"))
    return counter.get_total_flops() / 2.0


def steps_for_compute(macs: float, batch_size: int, target: float) -> int:
    """Optimizer steps that give ``macs`` x images seen closest to ``target`` (>= 1)."""
    if macs <= 0 or batch_size < 1 or target <= 0:
        raise ValueError(
            f"steps_for_compute needs positive MACs, batch and target, got {macs}, "
            f"{batch_size}, {target}"
        )
    return max(1, round(target / (macs * batch_size)))


@dataclass
class ScaledModel:
    name: str
    kwargs: dict[str, Any]
    multiplier: float
    achieved: float
    target: float
    kind: str

    @property
    def rel_error(self) -> float:
        return self.achieved / self.target - 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "kwargs": self.kwargs,
            "width_multiplier": self.multiplier,
            "achieved": self.achieved,
            "target": self.target,
            "kind": self.kind,
            "rel_error": self.rel_error,
        }


def measure_budget_quantity(
    name: str,
    kind: str,
    img_size: int,
    in_chans: int,
    num_classes: int,
    kwargs: dict[str, Any] | None = None,
) -> float:
    """Parameters or MACs of variant ``name`` built for the comparison's data."""
    return _measure(name, kwargs or {}, kind, img_size, in_chans, num_classes)


def scale_to_budget(
    name: str,
    kind: str,
    target: float,
    img_size: int,
    in_chans: int,
    num_classes: int,
    tolerance: float = 0.05,
    divisors: tuple[int, ...] = (8, 4, 2, 1, 16, 32),
    base_kwargs: dict[str, Any] | None = None,
) -> ScaledModel:
    """Find a width multiplier for ``name`` whose params (or MACs) are within ``tolerance`` of ``target``.

    Counts are taken for the comparison's data: ``img_size`` x ``img_size`` images with
    ``in_chans`` channels and ``num_classes`` classes. Integer widths are rounded to
    multiples of the first of ``divisors`` that reaches the tolerance (small models need
    finer steps). Raises ``ValueError`` when the class declares no ``width_args``, and with
    the closest size reached when the model cannot be scaled there. ``base_kwargs`` are
    other build arguments the comparison gives the model (kept fixed); the result holds
    only the scaled widths, and ``base_kwargs`` plus the result rebuild the model.
    """
    if kind not in ("params", "flops"):
        raise ValueError(f"scale_to_budget handles params and flops, not {kind!r}")
    if target <= 0:
        raise ValueError(f"the budget target must be positive, got {target}")
    fixed = dict(base_kwargs or {})
    data = dict(num_classes=num_classes, in_chans=in_chans, img_size=img_size)
    with torch.device("meta"):
        model = create_model(name, **{**fixed, **data})
    base = _declared_widths(name, model)
    if not base:
        raise ValueError(f"{name}: none of its width_args holds a width to scale ({fixed})")
    best: ScaledModel | None = None
    for divisor in divisors:
        start = 1.0 if best is None else best.multiplier  # finer steps start where coarse ended
        scaled = _search(name, base, fixed, kind, target, tolerance, data, divisor, start)
        if scaled is not None and (best is None or abs(scaled.rel_error) < abs(best.rel_error)):
            best = scaled
        if best is not None and abs(best.rel_error) <= tolerance:
            return best
    what = "parameters" if kind == "params" else "MACs"
    if best is None:
        raise ValueError(f"{name}: no width multiplier between 1/64 and 64 builds a valid model")
    raise ValueError(
        f"{name} cannot be scaled to {target:,.0f} {what} within {tolerance:.0%}: the closest width "
        f"({best.kwargs}) gives {best.achieved:,.0f} ({100 * best.rel_error:+.1f}%). Choose a target nearer "
        f"its size, a larger tolerance, or leave it out of this comparison"
    )


# A model's size grows about as the square of its width; the search starts from that.
_GUESS_EXPONENT = 2.0
_MAX_BUILDS = 24  # per divisor, for the multiplier search
_MAX_REFINE_BUILDS = 16  # per divisor, for choosing rounding directions
_MAX_STEPS = 40
_MAX_STALLED = 3  # steps in a row that come no closer to the target
_MULT_RANGE = (1 / 64, 64.0)


def _search(
    name: str,
    base: dict[str, Any],
    fixed: dict[str, Any],
    kind: str,
    target: float,
    tolerance: float,
    data: dict[str, int],
    divisor: int,
    start: float = 1.0,
) -> ScaledModel | None:
    """Search the multiplier with few builds: power-law steps from ``start`` until the target
    is bracketed, then log-log interpolation inside the bracket. When rounding every width
    to its nearest multiple leaves the count outside the tolerance (small models, widths
    that must divide heads or groups), round some widths the other way instead. Returns
    the closest model found (None if no multiplier built one)."""
    counts: dict[str, float | None] = {}  # scaled widths -> count (None: does not build)
    found: list[tuple[float, float, dict[str, Any]]] = []  # (multiplier, count, widths)

    def measure(mult: float, flipped: frozenset[tuple] = frozenset()) -> float | None:
        kwargs = {k: _scale(v, mult, divisor, flipped, (k,)) for k, v in base.items()}
        key = repr(sorted(kwargs.items()))
        if key not in counts:
            if len(counts) >= _MAX_BUILDS + (_MAX_REFINE_BUILDS if flipped else 0):
                return None
            try:
                counts[key] = _measure(name, {**fixed, **kwargs}, kind, **data)
            except (ValueError, RuntimeError, TypeError, ZeroDivisionError, AssertionError):
                counts[key] = None  # a width this family cannot take (e.g. heads do not divide it)
        value = counts[key]
        if value is not None:
            found.append((mult, value, kwargs))
        return value

    def measure_near(mult: float) -> tuple[float, float] | None:
        # widths some families reject (heads, groups) are skipped for a neighbour
        for step in (1.0, 1.03, 1 / 1.03, 1.07, 1 / 1.07):
            if (value := measure(mult * step)) is not None:
                return mult * step, value
        return None

    def error(value: float) -> float:
        return abs(math.log(value / target))

    close_enough = math.log1p(tolerance) / 2
    exponent = _GUESS_EXPONENT
    point = measure_near(start)
    best, stalled = math.inf, 0
    for _ in range(_MAX_STEPS):
        if point is None or error(point[1]) <= close_enough or len(counts) >= _MAX_BUILDS:
            break
        # counts that plateau (widths a family quantizes itself) stop the search early
        stalled = 0 if error(point[1]) < best else stalled + 1
        best = min(best, error(point[1]))
        if stalled >= _MAX_STALLED:
            break
        mult, value = point
        lo = max(((m, v) for m, v, _ in found if v < target), default=None)
        hi = min(((m, v) for m, v, _ in found if v > target), default=None)
        if lo is not None and hi is not None and lo[0] < hi[0]:
            if hi[0] / lo[0] < 1.001:
                break  # one rounding step apart: nothing in between
            # interpolate in log-log, but stay strictly inside so that the bracket shrinks
            span = math.log(hi[0] / lo[0])
            slope = math.log(hi[1] / lo[1]) / span
            t = math.log(target / lo[1]) / slope / span if slope > 0 else 0.5
            nxt = lo[0] * math.exp(min(max(t, 0.1), 0.9) * span)
        else:
            nxt = mult * min(max((target / value) ** (1 / exponent), 1 / 8), 8.0)
            if not _MULT_RANGE[0] <= nxt <= _MULT_RANGE[1]:
                break
        point = measure_near(nxt)
        if point is not None and point[1] != value and point[0] != mult:
            local = math.log(point[1] / value) / math.log(point[0] / mult)
            exponent = min(max(local, 0.5), 4.0) if local > 0 else exponent

    # Rounding directions: flip, one width at a time, the rounding that moves the count
    # furthest toward the target, while that helps.
    if found and min(error(v) for _, v, _ in found) > math.log1p(tolerance):
        mult, value, _ = min(found, key=lambda f: error(f[1]))
        paths = [p for k, v in base.items() for p in _int_paths(v, (k,))]
        flipped: frozenset[tuple] = frozenset()
        while error(value) > close_enough:
            up = value < target
            trials = []
            for p in paths:
                exact = _leaf(base[p[0]], p) * mult / divisor
                if p in flipped or exact == round(exact) or (round(exact) < exact) != up:
                    continue  # already flipped, exact, or a flip that moves away from the target
                if (new := measure(mult, flipped | {p})) is not None:
                    trials.append((error(new), new, p))
            if not trials or min(trials)[0] >= error(value):
                break
            _, value, p = min(trials)
            flipped |= {p}
    if not found:
        return None
    best_m, best_v, best_kwargs = min(found, key=lambda f: error(f[1]))
    return ScaledModel(name, best_kwargs, best_m, best_v, target, kind)
