"""Aggregate comparison runs into a leaderboard: mean and spread over seeds, and verdicts.

Every model is compared with the best one (highest mean test top-1) by
:func:`archbench.bench.stats.compare_runs`: paired t where the two models' runs share
their seeds, Welch's t otherwise, the test set's sampling noise from a paired bootstrap
over test images where runs recorded per-image results, Holm's correction across the
comparisons of one table, and a verdict ("better", "worse", "not distinguishable", or
"noise unknown" when neither noise can be estimated). The method is written under every
table (:func:`method_note`).

Runs that failed (a NaN loss, an error, a budget the model cannot reach) are listed as
such, and timings flagged unstable by the measurement are marked.

Units: records and rows hold accuracies as fractions in [0, 1], as training stores them;
the tables a person reads (this leaderboard, the report) show percent, 100 x fraction,
and gaps in percentage points (pp).
"""

from __future__ import annotations

import math
import re
import statistics
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from .stats import ALPHA, INTERVAL_METHODS, POWER, compare_runs, holm, unpack_correct, verdict

__all__ = [
    "aggregate",
    "compare_to_best",
    "distill_gains",
    "distill_gains_markdown",
    "failure_label",
    "holm_verdicts",
    "leaderboard_markdown",
    "leaderboard_text",
    "method_note",
    "paired_gain",
    "percent",
    "within_noise",
]

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


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if _finite(v)]
    if not values:
        return None, None
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else None
    return mean, std


def failure_label(record: dict[str, Any]) -> str:
    """What went wrong with a run, in words a table can show."""
    status = str(record.get("status"))
    error = str(record.get("error") or "")
    if status == "budget_unreachable":
        return "budget not reached"
    if (
        status == "failed_nan"
        or re.search(r"\bnan\b", error.lower())
        or (status == "completed" and not _finite(record.get("test_top1")))
    ):
        return "NaN"
    if "budget" in error.lower():
        return "budget not reached"
    return status if status not in ("None", "") else "error"


def _timing_flags(runs: list[dict[str, Any]], key: str) -> tuple[bool, float | None]:
    """(any run flagged unstable, the largest max/min spread) of one timing figure."""
    details = [r.get(key) for r in runs if isinstance(r.get(key), dict)]
    unstable = any(bool(d.get("unstable")) for d in details)
    ratios = [d["ratio"] for d in details if _finite(d.get("ratio"))]
    return unstable, (max(ratios) if ratios else None)


def aggregate(records: Iterable[dict[str, Any]], method: str = "t") -> list[dict[str, Any]]:
    """One row per model, sorted by mean test top-1, best first; then failed models.

    Completed runs give the mean and spread; every other model is compared with the best
    one (:func:`compare_to_best`, ``method``: ``"t"``, ``"percentile"`` or ``"bca"``).
    """
    if method not in INTERVAL_METHODS:
        raise ValueError(f"unknown interval method {method!r}; choose one of {INTERVAL_METHODS}")
    by_model: dict[str, list[dict[str, Any]]] = defaultdict(list)
    failed: dict[str, list[str]] = defaultdict(list)
    failed_kinds: dict[str, list[str]] = defaultdict(list)
    order: list[str] = []
    for r in records:
        name = r.get("entry") or r["model"]  # a distillation entry: student + method
        if name not in order:
            order.append(name)
        if r.get("status") == "completed" and _finite(r.get("test_top1")):
            by_model[name].append(r)
        else:
            label = failure_label(r)
            failed_kinds[name].append(label)
            detail = r.get("error") or r.get("status")
            failed[name].append(f"seed {r.get('seed')}: {label}: {detail}".strip())
    rows = []
    for model, runs in by_model.items():
        runs = sorted(runs, key=lambda r: (r.get("seed") is None, r.get("seed")))
        row: dict[str, Any] = {"model": model, "n": len(runs), "kind": runs[0].get("kind")}
        for m in METRICS:
            row[m], row[f"{m}_std"] = _mean_std([r.get(m) for r in runs])
        row["seeds"] = [r.get("seed") for r in runs]
        row["test_top1_runs"] = [r["test_top1"] for r in runs]  # per seed, in seed order
        row["test_correct_runs"] = [r.get("test_correct") for r in runs]
        test_sizes = {r.get("test_n") for r in runs}
        row["test_n"] = test_sizes.pop() if len(test_sizes) == 1 else None
        row["latency_unstable"], row["latency_ratio"] = _timing_flags(runs, "latency")
        row["throughput_unstable"], row["throughput_ratio"] = _timing_flags(
            runs, "throughput_detail"
        )
        row["scaled_kwargs"] = runs[0].get("model_kwargs", {})
        row["failed"] = failed.pop(model, [])
        row["failed_kinds"] = failed_kinds.pop(model, [])
        rows.append(row)
    rows.sort(key=lambda r: -r["test_top1"])
    for model in order:
        if model in failed:
            rows.append(
                {
                    "model": model,
                    "n": 0,
                    "failed": failed[model],
                    "failed_kinds": failed_kinds[model],
                    **{m: None for m in METRICS},
                }
            )
    compare_to_best(rows, method=method)
    for row in rows:  # the packed bits served the comparisons; rows stay small for --json
        row.pop("test_correct_runs", None)
    return rows


def _per_image(row: dict[str, Any]) -> Any:
    """The row's per-image results (runs x images) when every run recorded them."""
    packed = row.get("test_correct_runs") or []
    if not packed or any(not isinstance(p, dict) for p in packed):
        return None
    arrays = [unpack_correct(p) for p in packed]
    if len({a.size for a in arrays}) != 1:
        return None
    import numpy as np

    return np.stack(arrays)


def _same_images(a: Any, b: Any) -> bool:
    return a is not None and b is not None and a.shape[1] == b.shape[1]


def compare_to_best(rows: list[dict[str, Any]], method: str = "t") -> None:
    """Compare every completed row with the best one; Holm across them; set the verdicts.

    Each compared row gets ``comparison`` (:class:`~archbench.bench.stats.GapEstimate` as a
    dict, fractions), ``verdict`` and a ``vs_best`` summary in percentage points.
    """
    done = [r for r in rows if r["n"] > 0]
    if not done:
        return
    best = done[0]
    best["vs_best"], best["verdict"] = "best", "best"
    best_images = _per_image(best)
    estimates = []
    for r in done[1:]:
        images = _per_image(r)
        use_images = _same_images(images, best_images)
        est = compare_runs(
            r["test_top1_runs"],
            best["test_top1_runs"],
            seeds_a=r["seeds"] if None not in r["seeds"] else None,
            seeds_b=best["seeds"] if None not in best["seeds"] else None,
            correct_a=images if use_images else None,
            correct_b=best_images if use_images else None,
            method=method,
        )
        estimates.append(est)
    for est, p_adj in zip(estimates, holm([e.p for e in estimates])):
        est.p_adjusted = p_adj
        est.verdict = verdict(p_adj, est.gap)
    for r, est in zip(done[1:], estimates):
        r["comparison"] = est.to_dict()
        r["verdict"] = est.verdict
        gap = f"{percent(est.gap):+.2f}"
        if est.ci_low is None:
            r["vs_best"] = f"{gap} (1 seed: noise unknown)"
        else:
            r["vs_best"] = f"{gap} [{percent(est.ci_low):+.2f}, {percent(est.ci_high):+.2f}]"


def within_noise(a: dict[str, Any], b: dict[str, Any], key: str = "test_top1") -> bool | None:
    """Whether Welch's t test at 5% cannot tell ``a`` and ``b`` apart on ``key``.

    ``a`` and ``b`` are summaries (``key``, ``key_std``, ``n``); None when either has no
    spread (one run). Uses ``scipy.stats.ttest_ind_from_stats(equal_var=False)``.
    """
    from scipy import stats

    if a.get(f"{key}_std") is None or b.get(f"{key}_std") is None:
        return None
    if a.get(key) is None or b.get(key) is None:
        return None
    if a[f"{key}_std"] == 0 and b[f"{key}_std"] == 0:
        return a[key] == b[key]
    res = stats.ttest_ind_from_stats(
        a[key], a[f"{key}_std"], a["n"], b[key], b[f"{key}_std"], b["n"], equal_var=False
    )
    return bool(res.pvalue >= ALPHA)


# ----- tables --------------------------------------------------------------------------


def _pm(mean: float | None, std: float | None, fmt: str, scale: float = 1.0) -> str:
    if mean is None:
        return "-"
    if std is None:
        return f"{scale * mean:{fmt}}"
    return f"{scale * mean:{fmt}} ± {scale * std:{fmt}}"


def _accuracy(mean: float | None, std: float | None) -> str:
    """A fraction's mean (and std) as percent: 0.845, 0.012 -> '84.50 ± 1.20%'."""
    if mean is None:
        return "-"
    if not math.isfinite(mean):
        return "NaN"
    return _pm(mean, std, ".2f", scale=100.0) + "%"


def _p(p: float | None) -> str:
    if p is None:
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _timing(text: str, unstable: bool, ratio: float | None) -> str:
    if not unstable or text == "-":
        return text
    return text + (f" (unstable, max/min {ratio:.2f})" if ratio is not None else " (unstable)")


def _failed_summary(r: dict[str, Any]) -> str:
    kinds = r.get("failed_kinds") or []
    counts = {k: kinds.count(k) for k in dict.fromkeys(kinds)}
    return ", ".join(f"{n} {k}" for k, n in counts.items())


def _cells(r: dict[str, Any]) -> list[str]:
    if r["n"] == 0:
        label = "failed: " + (_failed_summary(r) or "error")
        return [r["model"], label, *["-"] * 7, "0", "; ".join(r["failed"])[:120], "-", "-", "-"]
    comp = r.get("comparison") or {}
    failed = f"; {_failed_summary(r)} failed" if r.get("failed") else ""
    mde = comp.get("mde")
    return [
        r["model"],
        _accuracy(r["test_top1"], r["test_top1_std"]),
        _accuracy(r["val_top1"], r["val_top1_std"]),
        f"{r['params'] / 1e6:.3f}" if r["params"] is not None else "-",
        f"{r['macs'] / 1e6:.1f}" if r["macs"] is not None else "-",
        _timing(
            # one measurement per architecture (seeds share it): the median of its stable
            # block; its spread shows as the unstable mark
            f"{r['latency_ms']:.2f}" if r["latency_ms"] is not None else "-",
            r.get("latency_unstable", False),
            r.get("latency_ratio"),
        ),
        _timing(
            f"{r['throughput']:.0f}" if r["throughput"] is not None else "-",
            r.get("throughput_unstable", False),
            r.get("throughput_ratio"),
        ),
        f"{r['peak_memory_mb']:.1f}" if r["peak_memory_mb"] is not None else "-",
        f"{r['train_time_s']:.0f}" if r["train_time_s"] is not None else "-",
        str(r["n"]),
        r.get("vs_best", "") + failed,
        _p(comp.get("p_adjusted")),
        r.get("verdict", "-"),
        f"{percent(mde):.2f}" if mde is not None else "-",
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
    "gap to best (pp) [95% CI]",
    "Holm p",
    "verdict",
    "detectable gap (pp)",
]


def method_note(rows: list[dict[str, Any]]) -> str:
    """The statistical method behind the table's verdicts, in a few sentences."""
    comps = [r["comparison"] for r in rows if r.get("comparison")]
    tests = sorted({c["test"] for c in comps})
    noises = sorted({c["noise"] for c in comps})
    method = comps[0]["method"] if comps else "t"
    interval = (
        "Student-t interval"
        if method == "t"
        else f"{'BCa' if method == 'bca' else 'percentile'} bootstrap interval"
    )
    parts = [
        "Mean ± standard deviation over seeds; accuracies in %, gaps in percentage points (pp).",
        f"Each model is compared with the best: the gap's 95% {interval}; paired t where the "
        "two models' runs share their seeds (same split, data order and augmentation), Welch's t "
        "with Welch-Satterthwaite degrees of freedom otherwise; where runs recorded per-image "
        "results, the test set's sampling noise (a paired bootstrap over test images, the same "
        "images for both models) is added to the seed noise.",
        f"p-values are Holm-adjusted across the {len(comps)} comparison(s) of this table; "
        f"'better' / 'worse' when the adjusted p is below {ALPHA:g}, otherwise "
        "'not distinguishable'; 'noise unknown' when one run per model and no per-image "
        "results leave no noise to estimate.",
        f"Detectable gap: the smallest true gap found with {POWER:.0%} power at the 5% level, "
        "given the seeds and the test set's size.",
    ]
    if comps:
        parts.append(f"Tests used: {'; '.join(tests)}. Noise covered: {'; '.join(noises)}.")
    if any(r.get("latency_unstable") or r.get("throughput_unstable") for r in rows):
        parts.append(
            "'unstable': no timing block met max ≤ 1.25 × min; the figure comes from the least "
            "unstable block and max/min is its spread."
        )
    parts.append(
        "Test accuracy is measured once per run, on the checkpoint chosen on the validation "
        "split. Failed runs (NaN loss, errors, a budget the model cannot reach) are listed, "
        "not hidden."
    )
    return " ".join(parts)


def leaderboard_markdown(rows: list[dict[str, Any]], conditions: str = "") -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "|".join("---" for _ in HEADERS) + "|"]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    text = "\n".join(lines)
    notes = "\n\n" + method_note(rows)
    return text + notes + (f"\n\n{conditions}" if conditions else "") + "\n"


def leaderboard_text(rows: list[dict[str, Any]]) -> str:
    table = [HEADERS] + [_cells(r) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(HEADERS))]
    out = []
    for n, row in enumerate(table):
        out.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out) + "\n\n" + method_note(rows)


# ----- distillation gains --------------------------------------------------------------


def paired_gain(
    runs_a: list[dict[str, Any]],
    runs_b: list[dict[str, Any]],
    seeds: list[int],
    key: str = "test_top1",
    method: str = "t",
    test_set_noise: bool = True,
) -> Any:
    """``runs_a`` minus ``runs_b`` (the same seeds, in order) by :func:`compare_runs`:
    paired t over seeds, plus the test set's noise where every run holds per-image hits
    on the same images (``test_set_noise=False``: seed noise only)."""
    images = None
    if (
        test_set_noise
        and key == "test_top1"
        and all(isinstance(r.get("test_correct"), dict) for r in runs_a + runs_b)
    ):
        import numpy as np

        images = [
            np.stack([unpack_correct(r["test_correct"]) for r in rs]) for rs in (runs_a, runs_b)
        ]
        if not _same_images(*images):
            images = None
    return compare_runs(
        [r[key] for r in runs_a],
        [r[key] for r in runs_b],
        seeds_a=seeds,
        seeds_b=seeds,
        correct_a=images[0] if images else None,
        correct_b=images[1] if images else None,
        method=method,
    )


def holm_verdicts(rows: list[dict[str, Any]]) -> None:
    """Holm-adjust the p-values of rows holding a ``comparison`` estimate; set each row's
    ``p_adjusted`` and ``verdict``, and replace the estimate by its dict."""
    estimates = [row["comparison"] for row in rows]
    for row, est, p_adj in zip(rows, estimates, holm([e.p for e in estimates])):
        est.p_adjusted = p_adj
        est.verdict = verdict(p_adj, est.gap)
        row["p_adjusted"] = p_adj
        row["verdict"] = est.verdict
        row["comparison"] = est.to_dict()


def distill_gains(
    records: Iterable[dict[str, Any]],
    key: str = "test_top1",
    method: str = "t",
    test_set_noise: bool = True,
) -> list[dict[str, Any]]:
    """Each distillation method's gain over the same student trained without distillation.

    Runs of a method and of the baseline that share a seed are paired (same data split,
    order and initialisation) and compared by :func:`paired_gain` (paired t over seeds,
    plus the test set's noise where per-image results exist), with Holm's correction
    across all (student, method) rows. Verdict: ``better`` / ``worse`` when the adjusted
    p-value is below 0.05, else ``not distinguishable``. ``test_set_noise=False`` leaves
    the per-image results out (seed noise only).
    """
    by: dict[tuple[str, str], dict[int, dict[str, Any]]] = defaultdict(dict)
    for r in records:
        if r.get("status") == "completed" and r.get("method") and _finite(r.get(key)):
            by[r["model"], r["method"]][r["seed"]] = r
    rows = []
    for (student, method_name), per_seed in sorted(by.items()):
        base = by.get((student, "no KD"))
        if method_name == "no KD" or not base:
            continue
        seeds = sorted(set(per_seed) & set(base))
        if not seeds:
            continue
        est = paired_gain(
            [per_seed[s] for s in seeds],
            [base[s] for s in seeds],
            seeds,
            key=key,
            method=method,
            test_set_noise=test_set_noise,
        )
        rows.append(
            {
                "student": student,
                "method": method_name,
                "n": len(seeds),
                "gain": est.gap,
                "ci_low": est.ci_low,
                "ci_high": est.ci_high,
                "comparison": est,
            }
        )
    holm_verdicts(rows)
    return rows


def distill_gains_markdown(rows: list[dict[str, Any]]) -> str:
    """The gain table, in percentage points, with the method stated under it."""
    lines = [
        "| student | method | seeds | gain over no KD (pp) | 95% interval (pp) | Holm p | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        gain = "-" if r["gain"] is None else f"{100 * r['gain']:+.2f}"
        ci = (
            "-" if r["ci_low"] is None else f"[{100 * r['ci_low']:+.2f}, {100 * r['ci_high']:+.2f}]"
        )
        lines.append(
            f"| {r['student']} | {r['method']} | {r['n']} | {gain} | {ci} | "
            f"{_p(r.get('p_adjusted'))} | {r['verdict']} |"
        )
    noises = sorted({r["comparison"]["noise"] for r in rows if r.get("comparison")})
    note = (
        "\n\nGain: test top-1 of the student trained with the method minus the same student "
        "trained without distillation, paired by seed (same split, order and initialisation), "
        "mean over seeds with a 95% paired Student-t interval (plus the test set's sampling "
        "noise from a paired bootstrap over test images where per-image results exist); "
        "p-values Holm-adjusted across the rows; 'better' or 'worse' only when the adjusted "
        f"p is below {ALPHA:g}." + (f" Noise covered: {'; '.join(noises)}." if noises else "")
    )
    return "\n".join(lines) + note + "\n"
