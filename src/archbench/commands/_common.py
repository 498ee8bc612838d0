"""Helpers shared by CLI sub-commands: argument types, model arguments, tables, JSON, progress.

Units: accuracies are stored and printed as JSON as fractions in [0, 1]; every table a
person reads shows them as percent (:func:`pct`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

# ----- argument types: bad values fail in the parser, with the option's name ---------


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (sizes, epochs, batches, seeds counts, jobs)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An argparse type: an integer >= 0 (seeds, class indices)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0 (seconds, learning rates)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


# ----- key=value options: --set and --model-arg -----------------------------------------


def parse_kv(items: list[str] | None, what: str) -> dict[str, Any]:
    """``key=value`` pairs; values parsed as JSON when they can be (numbers, true, lists).

    A value that is not JSON stays a string (``norm_layer=bcn``). A pair without ``=``,
    with an empty key or a key that is not a Python name, or a key given twice, is an error.
    """
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"{what} must be KEY=VALUE, got {item!r}")
        if not key.isidentifier():
            raise ValueError(f"{what}: {key!r} is not an argument name (in {item!r})")
        if key in out:
            raise ValueError(f"{what}: {key!r} is given twice")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def add_model_arg(parser: argparse.ArgumentParser, several_models: bool = False) -> None:
    """The one flag for model arguments, shared by every command that builds a model."""
    text = (
        "a model argument, e.g. depth=4 or attn_layer=se; values are read as JSON when they "
        "can be (numbers, true, [2,2,2,2]); repeat the flag or list several"
    )
    if several_models:
        text += "; MODEL:KEY=VALUE gives it to one model only"
    parser.add_argument(
        "--model-arg", action="extend", nargs="+", metavar="KEY=VALUE", help=text, default=None
    )


def model_args_for(items: list[str] | None, models: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``--model-arg`` values as keyword arguments per model in ``models``.

    ``KEY=VALUE`` goes to every model; ``MODEL:KEY=VALUE`` to that model alone, which
    must be one of ``models``.
    """
    shared: list[str] = []
    own: dict[str, list[str]] = {}
    for item in items or []:
        head, _, _ = item.partition("=")
        if ":" in head:
            model, _, rest = item.partition(":")
            if model not in models:
                raise ValueError(
                    f"--model-arg {item!r} names {model!r}, which is not among the models here "
                    f"({', '.join(models)})"
                )
            own.setdefault(model, []).append(rest)
        else:
            shared.append(item)
    common = parse_kv(shared, "--model-arg")
    result = {}
    for model in models:
        kwargs = dict(common)
        for key, value in parse_kv(own.get(model), "--model-arg").items():
            kwargs[key] = value  # a model's own value wins over the shared one
        result[model] = kwargs
    return result


def check_writable_file(path: str | None, what: str) -> None:
    """Fail before any work when ``path`` cannot be written (its folder is missing)."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{what} {path!r} is a folder; give a file name")
    if not p.parent.is_dir():
        raise FileNotFoundError(f"{what} {path!r}: folder {str(p.parent)!r} does not exist")


def looks_like_path(text: str) -> bool:
    """True for an argument a person meant as a file or folder rather than a name."""
    if "/" in text or "\\" in text or text.startswith((".", "~")):
        return True
    if text.endswith((".safetensors", ".json", ".yaml", ".yml")):
        return True
    return Path(text).exists()


# ----- display -----------------------------------------------------------------------


def pct(fraction: float | None, digits: int = 2) -> str:
    """A stored accuracy (fraction in [0, 1]) as the percent a person reads: 0.845 -> '84.50%'."""
    return "-" if fraction is None else f"{100.0 * fraction:.{digits}f}%"


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """A plain-text table: ``columns`` are (key, header) pairs; numbers are right-aligned."""

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
        return str(v)

    table = [[h for _, h in columns]] + [[cell(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    numeric = [
        all(isinstance(r.get(k), (int, float)) or r.get(k) is None for r in rows)
        for k, _ in columns
    ]
    lines = []
    for n, row in enumerate(table):
        parts = [
            c.rjust(w) if numeric[i] and n else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths))
        ]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def progress(items: Iterable[Any], desc: str, total: int | None = None) -> Iterable[Any]:
    """A progress bar on a terminal (stderr), silent otherwise."""
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, total=total, disable=not sys.stderr.isatty(), leave=False)


# ----- --task and --task-arg ------------------------------------------------------------


def add_task_arg(parser: argparse.ArgumentParser) -> None:
    """The training task options, shared by ``train`` and ``compare``."""
    parser.add_argument(
        "--task",
        metavar="NAME",
        help="what a training step computes: a registered task (default: the recipe's, "
        "classification) or package.module:ClassName; written into the frozen recipe",
    )
    parser.add_argument(
        "--task-arg",
        action="extend",
        nargs="+",
        metavar="KEY=VALUE",
        default=None,
        help="an argument of the task, e.g. temperature=4 (values read as JSON when they can be)",
    )


def task_changes(args: argparse.Namespace, recipe: Any) -> dict[str, Any]:
    """Recipe changes from ``--task`` / ``--task-arg`` (validated when the recipe is)."""
    changes: dict[str, Any] = {}
    task_args = parse_kv(args.task_arg, "--task-arg")
    if args.task is not None:
        changes["task"] = args.task
        changes["task_args"] = task_args
    elif task_args:
        changes["task_args"] = {**recipe.task_args, **task_args}
    return changes


def compare_summary(result: dict[str, Any]) -> dict[str, Any]:
    """What ``--json`` prints for a finished comparison: its paths and leaderboard rows."""
    return {
        "out": str(result["out"]),
        "leaderboard": str(result["out"] / "leaderboard.md"),
        "report": str(result["report"]),
        "results": str(result["out"] / "results.jsonl"),
        "elapsed_s": result["elapsed_s"],
        "phases": result.get("phases", {}),
        "rows": result["rows"],
    }
