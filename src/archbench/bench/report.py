"""The comparison report: plots (PNG and SVG files) and one self-contained ``report.html``.

The HTML embeds its plots as inline SVG and its styles inline: it opens in a browser
with no network access. Accuracies arrive as fractions in [0, 1]; every axis and table
here shows them in percent.
"""

from __future__ import annotations

import html
import io
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402

from .leaderboard import HEADERS, _accuracy, _cells, percent  # noqa: E402

__all__ = ["pareto_front", "write_plots", "write_report"]


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


def _scatter(
    rows: list[dict[str, Any]], key: str, label: str, scale: float, log: bool
) -> plt.Figure:
    done = [
        r for r in rows if r["n"] > 0 and r.get(key) is not None and r.get("test_top1") is not None
    ]
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    pts = [(r[key] / scale, percent(r["test_top1"])) for r in done]
    for r, (x, y) in zip(done, pts):
        yerr = percent(r.get("test_top1_std"))
        ax.errorbar([x], [y], yerr=[yerr] if yerr else None, fmt="o", capsize=3)
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
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel(label)
    ax.set_ylabel("test top-1 (%)")
    ax.grid(alpha=0.3)
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
            r.get("status"),
            _accuracy(r.get("test_top1"), None),
            _accuracy(r.get("val_top1"), None),
            r.get("epochs_completed", "-"),
            r.get("key", ""),
            r.get("error", "")[:100],
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
        "<p class='note'>Mean ± standard deviation over seeds. 'within noise': the gap to the best "
        "model is under twice its standard error. Latency: batch 1, median after warm-up; throughput "
        "and peak memory at the stated batch, eval mode. FLOPs are not speed: both are shown.</p>",
        "<h2>Accuracy against cost</h2><div class='plots'>",
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
    path = out_dir / "report.html"
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text("\n".join(parts), encoding="utf-8")
    tmp.replace(path)
    return path
