"""Helpers shared by the compression methods: argument checks and a ``fit`` call that
works with or without an output folder."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

__all__ = ["check_fraction", "count_params", "run_fit", "snapshot_batches"]


def check_fraction(
    name: str, value: Any, *, low_open: bool = True, high_open: bool = True
) -> float:
    """``value`` as a float inside (0, 1) (a closed end where ``*_open`` is False)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    v = float(value)
    low_ok = v > 0 if low_open else v >= 0
    high_ok = v < 1 if high_open else v <= 1
    if not (math.isfinite(v) and low_ok and high_ok):
        lo = "(0" if low_open else "[0"
        hi = "1)" if high_open else "1]"
        raise ValueError(f"{name} must be in {lo}, {hi}, got {value!r}")
    return v


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def snapshot_batches(ctx: Any, max_batches: int) -> list[torch.Tensor]:
    """Up to ``max_batches`` calibration batches of ``ctx`` on its device (fails without data)."""
    batches = [b.to(ctx.device) for b in ctx.calibration_batches(max_batches)]
    if not batches:
        raise ValueError("the calibration data gave no batches; pass a dataset with a train split")
    return batches


def run_fit(
    model: nn.Module,
    ctx: Any,
    task: Any,
    task_args: dict[str, Any],
    sub: str,
    epochs: int | None = None,
) -> Any:
    """Train ``model`` with ``task`` through ``fit`` on ``ctx.data`` and ``ctx.recipe``.

    The run folder is ``ctx.out_dir / sub`` (a temporary folder when there is none).
    """
    from ..train import fit, load_recipe

    if ctx.data is None:
        raise ValueError(f"method step {sub!r} trains the model; pass --data SPEC")
    recipe = load_recipe(ctx.recipe if ctx.recipe is not None else "cpu-fast")
    changes: dict[str, Any] = {"task": task.name, "task_args": dict(task_args)}
    if epochs is not None:
        changes["epochs"] = int(epochs)
    recipe = recipe.replace(**changes)
    if ctx.out_dir is not None:
        return fit(
            model,
            ctx.data,
            recipe,
            Path(ctx.out_dir) / sub,
            task=task,
            resume=False,
            progress=False,
        )
    with tempfile.TemporaryDirectory(prefix="archbench_compress_") as tmp:
        return fit(
            model, ctx.data, recipe, Path(tmp) / sub, task=task, resume=False, progress=False
        )
