"""One unit for accuracy: stored as fractions in [0, 1], shown as percent wherever a person reads it."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import matplotlib.pyplot as plt
import pytest

from archbench.bench.compare import _fractions
from archbench.bench.leaderboard import aggregate, leaderboard_markdown, leaderboard_text
from archbench.bench.report import _curves, _scatter, write_report


def _record(model, seed, test, val, history=()):
    return {
        "key": f"{model}-{seed}",
        "model": model,
        "seed": seed,
        "status": "completed",
        "accuracy_unit": "fraction",
        "test_top1": test,
        "val_top1": val,
        "params": 3e5,
        "macs": 2e7,
        "latency_ms": 1.5,
        "throughput": 900.0,
        "peak_memory_mb": 12.0,
        "train_time_s": 30.0,
        "history": [
            {"epoch": i + 1, "val_top1": v, "train_loss": 2.0 - i} for i, v in enumerate(history)
        ],
    }


RECORDS = [
    _record("resnet_pico", 0, 0.845, 0.86, history=[0.25, 0.5, 0.86]),
    _record("vit_pico", 0, 0.712, 0.73, history=[0.2, 0.45, 0.73]),
]


def test_leaderboard_shows_percent_of_stored_fractions():
    rows = aggregate(RECORDS)
    assert rows[0]["test_top1"] == 0.845  # the rows keep the stored unit
    md = leaderboard_markdown(rows)
    first = next(line for line in md.splitlines() if line.startswith("| resnet_pico"))
    cells = [c.strip() for c in first.strip("|").split("|")]
    assert cells[1:3] == ["84.50%", "86.00%"]
    second = next(line for line in md.splitlines() if line.startswith("| vit_pico"))
    assert "71.20%" in second and "-13.30 (1 seed" in second  # the gap is in percentage points
    assert "84.50%" in leaderboard_text(rows)


def test_leaderboard_spread_over_seeds_in_percent():
    rows = aggregate([_record("a", 0, 0.80, 0.8), _record("a", 1, 0.82, 0.8)])
    assert "81.00 ± 1.41%" in leaderboard_markdown(rows)


def test_report_curves_and_scatter_plot_percent_under_percent_labels():
    fig = _curves(RECORDS)
    try:
        ax = fig.axes[0]
        assert "%" in ax.get_ylabel()
        plotted = sorted(list(line.get_ydata()) for line in ax.get_lines())
        assert plotted == [pytest.approx([20, 45, 73]), pytest.approx([25, 50, 86])]
    finally:
        plt.close(fig)
    fig = _scatter(aggregate(RECORDS), "macs", "MMACs", 1e6, log=False)
    try:
        ax = fig.axes[0]
        assert "%" in ax.get_ylabel()
        ys = sorted(float(y) for line in ax.get_lines() for y in line.get_ydata())
        assert ys[0] == pytest.approx(71.2) and ys[-1] == pytest.approx(84.5)
        assert ax.get_ylim()[1] > 50  # the axis itself spans percent, not 0..1
    finally:
        plt.close(fig)


def test_report_html_tables_show_percent(tmp_path):
    path = write_report(tmp_path, {"data": "shapes"}, aggregate(RECORDS), RECORDS, {"torch": "x"})
    html = path.read_text()
    cells = re.findall(r"<td>([^<]*)</td>", html)
    assert "84.50%" in cells and "86.00%" in cells and "71.20%" in cells
    assert "0.845" not in cells and "0.84" not in cells
    assert re.search(r"<pre>.*&quot;torch&quot;", html, flags=re.S)  # conditions still there


def test_records_written_in_percent_are_read_as_fractions():
    old = {"key": "k", "test_top1": 84.5, "test_top5": 99.0, "val_top1": 86.0}
    assert _fractions(dict(old)) == {
        "key": "k",
        "test_top1": 0.845,
        "test_top5": 0.99,
        "val_top1": 0.86,
        "accuracy_unit": "fraction",
    }
    new = {"key": "k", "test_top1": 0.845, "accuracy_unit": "fraction"}
    assert _fractions(json.loads(json.dumps(new))) == new  # never converted twice


def test_kan_study_tables_show_percent():
    from archbench.commands.kan_study import _image_section

    rows = aggregate(
        [_record("kan_mlp_pico", s, 0.60 + s / 100, 0.6) for s in (0, 1)]
        + [_record("mlp_pico", s, 0.80 + s / 100, 0.8) for s in (0, 1)]
    )
    spec = SimpleNamespace(data="shapes", recipe="cpu-fast", epochs=1, seed_list=[0, 1])
    context = {
        "budget": {"kind": "params", "reference": "kan_mlp_pico", "tolerance": 0.05},
        "budget_target": 1e5,
    }
    text, _, losses = _image_section("kan-vs-mlp-params", spec, rows, context, 1.0)
    assert "| 60.50 ± 0.71 |" in text and "| 80.50 ± 0.71 |" in text
    assert "| -20.00 | KAN loses |" in text
    assert losses == ["`kan-vs-mlp-params`: kan_mlp_pico vs mlp_pico (60.5% vs 80.5%)"]
