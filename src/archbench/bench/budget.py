"""Matched budgets: rescale a model's width so that its parameters or MACs hit a target.

A comparison "at matched parameters" or "at matched FLOPs" trains every model at the
same size, so that differences are architecture, not capacity. Each model's width
arguments (the ones its class lists in ``width_args``, or the usual names such as
``widths``, ``dims``, ``embed_dim``) are multiplied by a common factor, rounded to a
hardware-friendly multiple, and the factor is searched until the count is within the
tolerance of the target. Depth is left as the variant defines it. The chosen arguments
are returned so that they are recorded with every run.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import torch

from ..models import create_model, get_model_card
from .measure import count_flops

__all__ = ["Budget", "ScaledModel", "parse_budget", "scale_to_budget", "width_args_of"]

# Argument names that carry a model's width, in any family that does not declare its own.
WIDTH_ARG_NAMES = (
    "widths",
    "dims",
    "embed_dim",
    "embed_dims",
    "stem_width",
    "stem_dim",
    "dim",
    "hidden_dim",
    "width",
    "channels",
    "base_width_mult",
)


@dataclass(frozen=True)
class Budget:
    """How every model in a comparison is given the same resources.

    kind: ``epochs`` (the recipe's epochs, or ``value``), ``time`` (wall-clock seconds of
    training per run), ``params`` (matched parameter count) or ``flops`` (matched MACs of
    one forward pass at the data's resolution). ``reference`` names a model whose count
    is the target when no absolute ``value`` is given.
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
    """Read a budget: ``epochs``, ``epochs=10``, ``time=120``, ``params=1M``,
    ``flops=20M``, ``params=match:resnet_pico`` (or the same as a mapping)."""
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
    kinds = ("epochs", "time", "params", "flops")
    kind, _, rest = str(text).partition("=")
    kind = kind.strip().lower()
    if kind not in kinds:
        raise ValueError(
            f"unknown budget {text!r}; use one of: epochs[=N], time=SECONDS, params=N|match:MODEL, flops=N|match:MODEL"
        )
    rest = rest.strip()
    if not rest:
        if kind != "epochs":
            raise ValueError(
                f"budget {kind!r} needs a value, e.g. {kind}=1M or {kind}=match:resnet_pico"
            )
        return Budget("epochs")
    if rest.startswith("match:"):
        if kind not in ("params", "flops"):
            raise ValueError(f"match: works with params and flops budgets, not {kind!r}")
        ref = rest[len("match:") :]
        get_model_card(ref)  # fails with close matches for a typo
        return Budget(kind, None, ref)
    value = _number(rest)
    if value <= 0:
        raise ValueError(f"budget {kind} must be positive, got {rest}")
    if kind == "epochs" and value != int(value):
        raise ValueError(f"epochs must be a whole number, got {rest}")
    return Budget(kind, value)


def width_args_of(name: str, base_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """The width arguments of variant ``name`` (built with ``base_kwargs``) and their values."""
    with torch.device("meta"):
        model = create_model(name, **(base_kwargs or {}))
    args = getattr(model, "build_args", {})
    declared = getattr(type(model), "width_args", None)
    keys = declared if declared else [k for k in WIDTH_ARG_NAMES if k in args]
    return {k: args[k] for k in keys if k in args and _is_width(args[k])}


def _is_width(v: Any) -> bool:
    """An int, or a non-empty (nested) tuple / list of ints."""
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return True
    return isinstance(v, (tuple, list)) and bool(v) and all(_is_width(i) for i in v)


def _scale(value: Any, mult: float, divisor: int) -> Any:
    if isinstance(value, (tuple, list)):
        return type(value)(_scale(v, mult, divisor) for v in value)
    return max(divisor, int(round(value * mult / divisor)) * divisor)


def _measure(
    name: str, kwargs: dict[str, Any], kind: str, img_size: int, in_chans: int, num_classes: int
) -> float:
    with torch.device("meta"):
        model = create_model(
            name, num_classes=num_classes, in_chans=in_chans, img_size=img_size, **kwargs
        )
    if kind == "params":
        return float(sum(p.numel() for p in model.parameters()))
    return count_flops(model, img_size)["macs"]


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
    divisors: tuple[int, ...] = (8, 4, 2, 1),
    base_kwargs: dict[str, Any] | None = None,
) -> ScaledModel:
    """Find a width multiplier for ``name`` whose params (or MACs) are within ``tolerance`` of ``target``.

    Widths are rounded to multiples of the first of ``divisors`` that reaches the tolerance
    (small models need finer steps). Raises ``ValueError`` with the closest size reached
    when the model cannot be scaled there. ``base_kwargs`` are other build arguments the
    comparison gives the model (kept fixed); the result holds only the scaled widths.
    """
    if kind not in ("params", "flops"):
        raise ValueError(f"scale_to_budget handles params and flops, not {kind!r}")
    fixed = dict(base_kwargs or {})
    base = width_args_of(name, fixed)
    if not base:
        raise ValueError(
            f"{name}: no width arguments to scale (its class declares no width_args and has none of "
            f"{', '.join(WIDTH_ARG_NAMES)}); use an epochs or time budget for it"
        )
    best: ScaledModel | None = None
    for divisor in divisors:
        scaled = _search(name, base, fixed, kind, target, img_size, in_chans, num_classes, divisor)
        if best is None or abs(scaled.rel_error) < abs(best.rel_error):
            best = scaled
        if abs(best.rel_error) <= tolerance:
            return best
    what = "parameters" if kind == "params" else "MACs"
    raise ValueError(
        f"{name} cannot be scaled to {target:,.0f} {what} within {tolerance:.0%}: the closest width "
        f"({best.kwargs}) gives {best.achieved:,.0f} ({100 * best.rel_error:+.1f}%). Choose a target nearer "
        f"its size, a larger tolerance, or leave it out of this comparison"
    )


def _search(
    name: str,
    base: dict[str, Any],
    fixed: dict[str, Any],
    kind: str,
    target: float,
    img_size: int,
    in_chans: int,
    num_classes: int,
    divisor: int,
) -> ScaledModel:
    cache: dict[float, tuple[float, dict[str, Any]] | None] = {}

    def evaluate(mult: float) -> tuple[float, dict[str, Any]] | None:
        key = round(mult, 6)
        if key not in cache:
            kwargs = {k: _scale(v, mult, divisor) for k, v in base.items()}
            try:
                value = _measure(name, {**fixed, **kwargs}, kind, img_size, in_chans, num_classes)
                cache[key] = (value, kwargs)
            except (ValueError, RuntimeError, TypeError, ZeroDivisionError):
                cache[key] = None  # a width this family cannot take (e.g. heads do not divide it)
        return cache[key]

    # Coarse log-spaced sweep, then refine around the best bracket.
    grid = [2 ** (e / 4) for e in range(-16, 17)]
    for m in grid:
        evaluate(m)
    ok = [(m, r[0]) for m, r in cache.items() if r is not None]
    if not ok:
        raise ValueError(f"{name}: no width multiplier between 1/16 and 16 builds a valid model")
    below = [m for m, v in ok if v <= target]
    above = [m for m, v in ok if v >= target]
    if below and above:
        lo, hi = max(below), min(above)
        if lo < hi:
            for _ in range(14):
                mid = math.sqrt(lo * hi)
                r = evaluate(mid)
                if r is None:
                    # try a neighbour that the family accepts
                    r = evaluate(mid * 1.01)
                    if r is None:
                        break
                if r[0] < target:
                    lo = mid
                else:
                    hi = mid
    best_m, (best_v, best_kwargs) = min(
        ((m, r) for m, r in cache.items() if r is not None),
        key=lambda mr: abs(math.log(mr[1][0] / target)),
    )
    return ScaledModel(name, best_kwargs, best_m, best_v, target, kind)
