"""Aggregate comparison runs into a leaderboard: mean and spread over seeds, with noise marked.

Two models are "within noise" when the difference of their mean test accuracies is
smaller than twice its standard error, sqrt(s1^2/n1 + s2^2/n2) (roughly a two-sided 95%
Welch interval). With a single seed there is no estimate of the noise, and the table
says so instead of pretending a ranking.

Units: records and rows hold accuracies as fractions in [0, 1], as training stores them;
the tables a person reads (this leaderboard, the report) show percent, 100 x fraction.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

__all__ = ["aggregate", "leaderboard_markdown", "leaderboard_text", "percent", "within_noise"]

ACCURACY_KEYS = ("test_top1", "test_top5", "val_top1")  # fractions in [0, 1]


def percent(fraction: float | None) -> float | None:
    """A stored accuracy (fraction in [0, 1]) in the percent that tables and plots show."""
    return None if fraction is None else 100.0 * fraction


METRICS = (
    "test_top1",
    "val_top1",
    "params",
    "macs",
    "latency_ms",
    "throughput",
    "peak_memory_mb",
    "train_time_s",
)


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return None, None
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else None
    return mean, std


def aggregate(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per model (completed runs only), sorted by mean test top-1, best first."""
    by_model: dict[str, list[dict[str, Any]]] = defaultdict(list)
    failed: dict[str, list[str]] = defaultdict(list)
    for r in records:
        name = r.get("entry") or r["model"]  # a distillation entry: student + method
        if r.get("status") == "completed":
            by_model[name].append(r)
        else:
            failed[name].append(
                f"seed {r.get('seed')}: {r.get('status')}: {r.get('error', '')}".strip()
            )
    rows = []
    for model, runs in by_model.items():
        row: dict[str, Any] = {"model": model, "n": len(runs), "kind": runs[0].get("kind")}
        for m in METRICS:
            row[m], row[f"{m}_std"] = _mean_std([r.get(m) for r in runs])
        row["seeds"] = sorted(r.get("seed") for r in runs)
        row["scaled_kwargs"] = runs[0].get("model_kwargs", {})
        row["failed"] = failed.pop(model, [])
        rows.append(row)
    rows.sort(key=lambda r: -(r["test_top1"] if r["test_top1"] is not None else -1))
    for model, errs in failed.items():
        rows.append({"model": model, "n": 0, "failed": errs, **{m: None for m in METRICS}})
    _mark_noise(rows)
    return rows


def within_noise(a: dict[str, Any], b: dict[str, Any], key: str = "test_top1") -> bool | None:
    """True when the difference of ``a`` and ``b`` is inside 2 standard errors; None if unknown."""
    if (
        a.get(f"{key}_std") is None
        or b.get(f"{key}_std") is None
        or a.get(key) is None
        or b.get(key) is None
    ):
        return None
    se = math.sqrt(a[f"{key}_std"] ** 2 / a["n"] + b[f"{key}_std"] ** 2 / b["n"])
    return abs(a[key] - b[key]) <= 2 * se


def _mark_noise(rows: list[dict[str, Any]]) -> None:
    done = [r for r in rows if r["n"] > 0]
    if not done:
        return
    best = done[0]
    for i, r in enumerate(done):
        if i == 0:
            r["vs_best"] = "best"
            continue
        tie = within_noise(r, best)
        diff = percent(r["test_top1"] - best["test_top1"])  # in percentage points
        if tie is None:
            r["vs_best"] = f"{diff:+.2f} (1 seed: noise unknown)"
        elif tie:
            r["vs_best"] = f"{diff:+.2f} (within noise)"
        else:
            r["vs_best"] = f"{diff:+.2f} (outside noise)"
    for r in done[1:]:
        r["tied_with_best"] = within_noise(r, best)
    best["tied_with_best"] = True


def _pm(mean: float | None, std: float | None, fmt: str, scale: float = 1.0) -> str:
    if mean is None:
        return "-"
    if std is None:
        return f"{scale * mean:{fmt}}"
    return f"{scale * mean:{fmt}} ± {scale * std:{fmt}}"


def _accuracy(mean: float | None, std: float | None) -> str:
    """A fraction's mean (and std) as percent: 0.845, 0.012 -> '84.50 ± 1.20%'."""
    return "-" if mean is None else _pm(mean, std, ".2f", scale=100.0) + "%"


def _cells(r: dict[str, Any]) -> list[str]:
    if r["n"] == 0:
        return [
            r["model"],
            "failed",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "0",
            "; ".join(r["failed"])[:120],
        ]
    return [
        r["model"],
        _accuracy(r["test_top1"], r["test_top1_std"]),
        _accuracy(r["val_top1"], r["val_top1_std"]),
        f"{r['params'] / 1e6:.3f}" if r["params"] is not None else "-",
        f"{r['macs'] / 1e6:.1f}" if r["macs"] is not None else "-",
        _pm(r["latency_ms"], r["latency_ms_std"], ".2f"),
        f"{r['throughput']:.0f}" if r["throughput"] is not None else "-",
        f"{r['peak_memory_mb']:.1f}" if r["peak_memory_mb"] is not None else "-",
        f"{r['train_time_s']:.0f}" if r["train_time_s"] is not None else "-",
        str(r["n"]),
        r.get("vs_best", "") + (f"; {len(r['failed'])} failed" if r.get("failed") else ""),
    ]


HEADERS = [
    "model",
    "test top-1",
    "val top-1",
    "params (M)",
    "MMACs",
    "latency b1 (ms)",
    "img/s",
    "peak mem (MB)",
    "train (s)",
    "seeds",
    "vs best (% points)",
]


def leaderboard_markdown(rows: list[dict[str, Any]], conditions: str = "") -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "|".join("---" for _ in HEADERS) + "|"]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    text = "\n".join(lines)
    notes = (
        "\n\nMean ± standard deviation over seeds. 'within noise': the gap to the best model is "
        "smaller than twice its standard error (Welch); such models are not distinguishable by "
        "this comparison. Test accuracy is measured once per run, on the checkpoint chosen on "
        "the validation split."
    )
    return text + notes + (f"\n\n{conditions}" if conditions else "") + "\n"


def leaderboard_text(rows: list[dict[str, Any]]) -> str:
    table = [HEADERS] + [_cells(r) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(HEADERS))]
    out = []
    for n, row in enumerate(table):
        out.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def distill_gains(
    records: Iterable[dict[str, Any]], key: str = "test_top1"
) -> list[dict[str, Any]]:
    """Each distillation method's gain over the same student trained without distillation.

    Runs of a method and of the baseline that share a seed are paired (same data split,
    order and initialisation): the gain is the mean of the per-seed differences, with a
    95% Student-t interval over seeds (``scipy.stats.t``; none from a single seed).
    Verdict: ``better`` / ``worse`` when the interval excludes zero, else ``not
    distinguishable``.
    """
    from scipy import stats

    by: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    for r in records:
        if r.get("status") == "completed" and r.get("method") and r.get(key) is not None:
            by[r["model"], r["method"]][r["seed"]] = r[key]
    rows = []
    for (student, method), per_seed in sorted(by.items()):
        base = by.get((student, "no KD"))
        if method == "no KD" or not base:
            continue
        seeds = sorted(set(per_seed) & set(base))
        diffs = [per_seed[s] - base[s] for s in seeds]
        row: dict[str, Any] = {"student": student, "method": method, "n": len(diffs)}
        row["gain"] = statistics.fmean(diffs) if diffs else None
        row["ci_low"] = row["ci_high"] = None
        row["verdict"] = "not distinguishable (1 seed)" if len(diffs) == 1 else "-"
        if len(diffs) > 1:
            sd = statistics.stdev(diffs)
            half = stats.t.ppf(0.975, len(diffs) - 1) * sd / math.sqrt(len(diffs))
            row["ci_low"], row["ci_high"] = row["gain"] - half, row["gain"] + half
            if row["ci_low"] > 0:
                row["verdict"] = "better"
            elif row["ci_high"] < 0:
                row["verdict"] = "worse"
            else:
                row["verdict"] = "not distinguishable"
        rows.append(row)
    return rows


def distill_gains_markdown(rows: list[dict[str, Any]]) -> str:
    """The gain table, in percentage points, with the method stated under it."""
    lines = [
        "| student | method | seeds | gain over no KD (pp) | 95% interval (pp) | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        gain = "-" if r["gain"] is None else f"{100 * r['gain']:+.2f}"
        ci = (
            "-" if r["ci_low"] is None else f"[{100 * r['ci_low']:+.2f}, {100 * r['ci_high']:+.2f}]"
        )
        lines.append(
            f"| {r['student']} | {r['method']} | {r['n']} | {gain} | {ci} | {r['verdict']} |"
        )
    note = (
        "\n\nGain: test top-1 of the student trained with the method minus the same student "
        "trained without distillation, paired by seed (same split, order and initialisation), "
        "mean over seeds with a 95% Student-t interval; 'better' or 'worse' only when the "
        "interval excludes zero."
    )
    return "\n".join(lines) + note + "\n"
