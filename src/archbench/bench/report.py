"""The comparison report: plots (PNG and SVG files) and one self-contained ``report.html``.

The HTML embeds its plots as inline SVG and its styles inline: it opens in a browser
with no network access, and :func:`external_references` (run on every report written)
finds any ``src``, ``href``, ``url(...)`` or ``@import`` that points anywhere but a
``data:`` URI or a ``#`` fragment. Accuracies arrive as fractions in [0, 1]; every axis
and table here shows them in percent, and gaps in percentage points. The accuracy plots
show every seed's result and each model's 95% interval
(:func:`archbench.bench.stats.accuracy_interval`); a gap plot shows each model's gap to
the best with its interval and verdict; a generated paragraph says which differences
hold and which do not.
"""

from __future__ import annotations

import html
import io
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402

from .leaderboard import HEADERS, _accuracy, _cells, _p, failure_label, method_note, percent  # noqa: E402
from .stats import accuracy_interval  # noqa: E402

__all__ = ["external_references", "findings", "pareto_front", "write_plots", "write_report"]

_ATTR_REF = re.compile(
    r"""(?<![\w:-])(?:xlink:href|href|src|srcset|poster|action|formaction|background|data)"""
    r"""\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'=<>`]+))""",
    re.IGNORECASE,
)
_CSS_URL = re.compile(r"""url\(\s*(?:"([^"]*)"|'([^']*)'|([^)]*?))\s*\)""", re.IGNORECASE)
_CSS_IMPORT = re.compile(r"""@import\s*(?:"([^"]*)"|'([^']*)'|([^;\s]+))""", re.IGNORECASE)


def external_references(text: str) -> list[str]:
    """Every reference in an HTML page that would load something from outside it.

    Looks at ``src``, ``href`` (and ``xlink:href``, ``srcset``, ``poster``, ``action``,
    ``data``) attributes in any quote style or none, CSS ``url(...)`` and ``@import``.
    Only ``data:`` URIs and ``#`` fragments are self-contained; anything else (``http``,
    ``//cdn``, a relative file, any ``@import`` of a file) is returned.
    """
    found = []
    for pattern in (_ATTR_REF, _CSS_URL, _CSS_IMPORT):
        for m in pattern.finditer(text):
            value = html.unescape(next(g for g in m.groups() if g is not None)).strip()
            if pattern is _CSS_IMPORT and value.lower().startswith("url("):
                continue  # the url(...) pattern judges it
            if not (value.lower().startswith("data:") or value.startswith("#")):
                found.append(m.group(0))
    return found


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated: lower cost (x) and higher accuracy (y) are better."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (x2 <= x and y2 >= y) and (x2 < x or y2 > y)
            for j, (x2, y2) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def _log_axis(ax: plt.Axes, values: list[float]) -> None:
    """A log x axis whose ticks carry labels even when the data span less than a decade."""
    ax.set_xscale("log")
    lo, hi = min(values), max(values)
    subs = (1.0, 2.0, 5.0) if hi / lo > 5 else tuple(float(k) for k in range(1, 10))
    ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=subs))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_locator(ticker.LogLocator(base=10, subs=tuple(range(1, 10))))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    if hi / lo < 1.5:  # a narrow span: widen it so that at least two labelled ticks show
        ax.set_xlim(lo / 1.3, hi * 1.3)


def _interval(row: dict[str, Any]) -> tuple[float, float, str] | None:
    runs = row.get("test_top1_runs") or ([row["test_top1"]] if row.get("n") == 1 else [])
    if not runs:
        return None
    return accuracy_interval(runs, row.get("test_n"))


def _scatter(
    rows: list[dict[str, Any]], key: str, label: str, scale: float, log: bool
) -> plt.Figure:
    """Test top-1 (%) against a cost: every seed as a small dot, each mean with its 95% bar."""
    done = [
        r for r in rows if r["n"] > 0 and r.get(key) is not None and r.get("test_top1") is not None
    ]
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    pts = [(r[key] / scale, percent(r["test_top1"])) for r in done]
    for i, (r, (x, y)) in enumerate(zip(done, pts)):
        color = f"C{i % 10}"
        seeds = [percent(v) for v in r.get("test_top1_runs") or []]
        if len(seeds) > 1:
            ax.scatter([x] * len(seeds), seeds, s=12, color=color, alpha=0.45, zorder=2)
        interval = _interval(r)
        yerr = None
        if interval is not None:
            yerr = [[y - percent(interval[0])], [percent(interval[1]) - y]]
        ax.errorbar([x], [y], yerr=yerr, fmt="o", capsize=3, color=color, zorder=3)
        ax.annotate(r["model"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    front = pareto_front(pts)
    if len(front) > 1:
        ax.plot(
            [pts[i][0] for i in front],
            [pts[i][1] for i in front],
            "--",
            color="grey",
            lw=1,
            label="Pareto front",
        )
        ax.legend(loc="lower right", fontsize=8)
    if log and pts and min(p[0] for p in pts) > 0:
        _log_axis(ax, [p[0] for p in pts])
    ax.set_xlabel(label)
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("dots: seeds; bars: 95% interval of the mean", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


_VERDICT_COLORS = {
    "better": "#2a7",
    "worse": "#c33",
    "not distinguishable": "#888",
    "noise unknown": "#bbb",
}


def _gaps(rows: list[dict[str, Any]]) -> plt.Figure:
    """Each model's gap to the best (pp) with its 95% interval, coloured by verdict."""
    compared = [r for r in rows if r.get("comparison")]
    fig, ax = plt.subplots(figsize=(6.4, 0.8 + 0.45 * max(1, len(compared))), dpi=110)
    for i, r in enumerate(compared):
        c = r["comparison"]
        color = _VERDICT_COLORS.get(c["verdict"], "#888")
        xerr = None
        if c.get("ci_low") is not None:
            xerr = [[percent(c["gap"] - c["ci_low"])], [percent(c["ci_high"] - c["gap"])]]
        ax.errorbar([percent(c["gap"])], [i], xerr=xerr, fmt="o", capsize=4, color=color)
        ax.annotate(
            c["verdict"],
            (percent(c["gap"]), i),
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
            fontsize=7,
            color=color,
        )
    ax.axvline(0.0, color="black", lw=0.8)
    ax.set_yticks(range(len(compared)), [r["model"] for r in compared])
    ax.set_ylim(-0.7, max(1, len(compared)) - 0.3)
    ax.invert_yaxis()
    best = next((r["model"] for r in rows if r.get("verdict") == "best"), "the best model")
    ax.set_xlabel(f"test top-1 gap to {best} (percentage points), 95% interval")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig


def _curves(records: list[dict[str, Any]]) -> plt.Figure:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    by_model: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if r.get("history"):
            by_model[r.get("entry") or r["model"]].append(r)
    for i, (model, runs) in enumerate(sorted(by_model.items())):
        color = f"C{i % 10}"
        for k, run in enumerate(runs):
            hist = run["history"]
            epochs = [h.get("epoch", j + 1) for j, h in enumerate(hist)]
            label = model if k == 0 else None
            axes[0].plot(
                epochs,
                [percent(h.get("val_top1")) for h in hist],
                color=color,
                alpha=0.8,
                label=label,
            )
            axes[1].plot(
                epochs, [h.get("train_loss") for h in hist], color=color, alpha=0.8, label=label
            )
    axes[0].set_ylabel("validation top-1 (%)")
    axes[1].set_ylabel("training loss")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    if by_model:
        axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def write_plots(
    rows: list[dict[str, Any]], records: list[dict[str, Any]], out_dir: Path
) -> dict[str, str]:
    """Save every plot as PNG and SVG under ``out_dir/plots``; return name -> inline SVG text."""
    plot_dir = Path(out_dir) / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    figures = {
        "accuracy_vs_macs": _scatter(rows, "macs", "MMACs per image (log)", 1e6, log=True),
        "accuracy_vs_latency": _scatter(
            rows, "latency_ms", "latency at batch 1 (ms, log)", 1.0, log=True
        ),
        "gaps": _gaps(rows),
        "training_curves": _curves(records),
    }
    svgs = {}
    for name, fig in figures.items():
        fig.savefig(plot_dir / f"{name}.png")
        fig.savefig(plot_dir / f"{name}.svg")
        buf = io.StringIO()
        fig.savefig(buf, format="svg")
        text = buf.getvalue()
        svgs[name] = text[text.index("<svg") :]
        plt.close(fig)
    return svgs


def findings(rows: list[dict[str, Any]]) -> str:
    """A short paragraph, generated from the rows: which differences hold and which do not."""
    done = [r for r in rows if r["n"] > 0]
    if not done:
        return "No run completed, so there is nothing to compare."
    best = done[0]
    text = [
        f"{best['model']} has the highest mean test top-1, "
        f"{percent(best['test_top1']):.2f}% over {best['n']} seed(s)."
    ]
    hold, open_, unknown = [], [], []
    for r in done[1:]:
        c = r["comparison"]
        gap = f"{percent(c['gap']):+.2f} pp"
        if c["verdict"] in ("worse", "better"):
            hold.append(
                f"{r['model']} is {c['verdict']} ({gap}, 95% interval "
                f"[{percent(c['ci_low']):+.2f}, {percent(c['ci_high']):+.2f}], "
                f"Holm p {_p(c['p_adjusted'])})"
            )
        elif c["verdict"] == "not distinguishable":
            why = (
                "holds zero"
                if c["ci_low"] <= 0 <= c["ci_high"]
                else f"excludes zero, but Holm's correction leaves p {_p(c['p_adjusted'])}"
            )
            open_.append(
                f"{r['model']} ({gap}; the interval [{percent(c['ci_low']):+.2f}, "
                f"{percent(c['ci_high']):+.2f}] {why}; this comparison could only detect a gap "
                f"of about {percent(c['mde']):.2f} pp)"
            )
        else:
            unknown.append(f"{r['model']} ({gap})")
    if hold:
        text.append("Differences that hold: " + "; ".join(hold) + ".")
    if open_:
        text.append(
            "Not distinguishable from the best with these seeds and this test set: "
            + "; ".join(open_)
            + "."
        )
    if unknown:
        text.append(
            "Noise unknown (one run per model, no per-image results), so no verdict: "
            + "; ".join(unknown)
            + "."
        )
    if not done[1:]:
        text.append("It is the only model with a completed run.")
    noises = sorted({r["comparison"]["noise"] for r in done[1:] if r.get("comparison")})
    if noises:
        text.append(f"The intervals cover: {'; '.join(noises)}.")
    failed = [r for r in rows if r.get("failed")]
    if failed:
        text.append(
            "Failed runs: "
            + "; ".join(
                f"{r['model']} ({', '.join(dict.fromkeys(r.get('failed_kinds') or ['error']))})"
                for r in failed
            )
            + "."
        )
    unstable = [
        r["model"] for r in done if r.get("latency_unstable") or r.get("throughput_unstable")
    ]
    if unstable:
        text.append(f"Timings flagged unstable (a busy machine?): {', '.join(unstable)}.")
    return " ".join(text)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1150px;color:#222}
h1{font-size:1.6em} h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0} td,th{border:1px solid #ccc;padding:.3em .6em}
th{background:#f4f4f4} tr:nth-child(even){background:#fafafa} .plots svg{max-width:100%;height:auto}
code,pre{background:#f6f6f6;padding:.1em .3em} pre{padding:.6em;overflow-x:auto;font-size:.85em}
.note{color:#555;font-size:.9em}
"""


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def write_report(
    out_dir: Path,
    spec: dict[str, Any],
    rows: list[dict[str, Any]],
    records: list[dict[str, Any]],
    environment: dict[str, Any],
    extra_sections: list[tuple[str, str]] | None = None,
) -> Path:
    """Write ``report.html`` (and the plots) for a comparison; return its path."""
    out_dir = Path(out_dir)
    svgs = write_plots(rows, records, out_dir)
    run_rows = [
        [
            r["model"],
            r.get("seed"),
            r.get("status") if r.get("status") == "completed" else failure_label(r),
            _accuracy(r.get("test_top1"), None),
            _accuracy(r.get("val_top1"), None),
            r.get("epochs_completed", "-"),
            r.get("key", ""),
            str(r.get("error") or "")[:100],
        ]
        for r in records
    ]
    scaled = [
        [r["model"], json.dumps(r.get("scaled_kwargs") or {})]
        for r in rows
        if r.get("scaled_kwargs")
    ]
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>archbench comparison</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>archbench comparison</h1>",
        f"<p class='note'>Data <code>{html.escape(str(spec.get('data')))}</code>, recipe "
        f"<code>{html.escape(str(spec.get('recipe')))}</code>, budget <code>{html.escape(json.dumps(spec.get('budget')))}</code>, "
        f"seeds {html.escape(str(spec.get('seeds')))}. Every model trained with the same data, split, "
        "augmentation, recipe and seeds; the checkpoint is chosen on the validation split and the "
        "test split is evaluated once.</p>",
        "<h2>Leaderboard</h2>",
        _table(HEADERS, [_cells(r) for r in rows]),
        f"<p class='note'>{html.escape(method_note(rows))} Latency: batch 1, median of the "
        "accepted timing block; throughput and peak memory at the stated batch, eval mode. "
        "FLOPs are not speed: both are shown.</p>",
        "<h2>What the comparison shows</h2>",
        f"<p class='findings'>{html.escape(findings(rows))}</p>",
        "<h2>Gaps to the best model</h2><div class='plots'>",
        svgs["gaps"],
        "</div><h2>Accuracy against cost</h2><div class='plots'>",
        svgs["accuracy_vs_macs"],
        svgs["accuracy_vs_latency"],
        "</div><h2>Training curves</h2><div class='plots'>",
        svgs["training_curves"],
        "</div>",
    ]
    if scaled:
        parts += [
            "<h2>Scaled configurations (matched budget)</h2>",
            _table(["model", "arguments"], scaled),
        ]
    for title, body in extra_sections or []:
        parts += [f"<h2>{html.escape(title)}</h2>", body]
    parts += [
        "<h2>Runs</h2>",
        _table(
            ["model", "seed", "status", "test top-1", "val top-1", "epochs", "config key", "error"],
            run_rows,
        ),
        "<h2>Conditions</h2>",
        f"<pre>{html.escape(json.dumps({'spec': spec, 'environment': environment}, indent=2, default=str))}</pre>",
        "</body></html>",
    ]
    page = "\n".join(parts)
    outside = external_references(page)
    if outside:
        raise ValueError(f"the report would load from outside itself: {outside[:5]}")
    path = out_dir / "report.html"
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path
