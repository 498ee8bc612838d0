"""report.html: self-contained, seeds and intervals plotted, findings written, rendered in Chromium."""

from __future__ import annotations

import html.parser
import math
import os
import shutil
import subprocess

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.collections import LineCollection, PathCollection
from scipy import stats

import archbench.bench.report as report_module
from archbench.bench.leaderboard import aggregate
from archbench.bench.report import _gaps, _scatter, external_references, findings, write_report
from archbench.bench.stats import pack_correct, unpack_correct

N_IMAGES = 300


def _records() -> list[dict]:
    """Three models x three seeds with per-image results, a NaN run and a budget failure."""
    rng = np.random.default_rng(0)
    out = []
    for model, p, macs in (("resnet_pico", 0.86, 1.8e7), ("vit_pico", 0.55, 2.5e7)):
        for seed in range(3):
            right = rng.random(N_IMAGES) < p
            out.append(
                {
                    "model": model,
                    "seed": seed,
                    "status": "completed",
                    "accuracy_unit": "fraction",
                    "test_top1": float(right.mean()),
                    "val_top1": float(right.mean()),
                    "test_n": N_IMAGES,
                    "test_correct": pack_correct(right),
                    "params": 1e5,
                    "macs": macs,
                    "latency_ms": 1.2,
                    "latency": {"unstable": model == "vit_pico", "ratio": 1.7},
                    "throughput": 900.0,
                    "peak_memory_mb": 4.0,
                    "train_time_s": 12.0,
                    "history": [
                        {"epoch": 1, "val_top1": 0.3, "train_loss": 2.0},
                        {"epoch": 2, "val_top1": p, "train_loss": 1.0},
                    ],
                }
            )
    # a model a hair below the best: not distinguishable
    for r in [r for r in out if r["model"] == "resnet_pico"]:
        twin = dict(r, model="convnext_pico", macs=2.1e7, latency={"unstable": False})
        right = unpack_correct(r["test_correct"])
        right[np.flatnonzero(right)[: 3 + r["seed"]]] = False
        twin["test_correct"], twin["test_top1"] = pack_correct(right), float(right.mean())
        out.append(twin)
    out.append({"model": "mixer_pico", "seed": 0, "status": "failed_nan", "error": "loss is nan"})
    out.append(
        {
            "model": "kan_pico",
            "seed": 0,
            "status": "error",
            "error": "ValueError: budget flops=2e7 cannot be reached",
        }
    )
    return out


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    records = _records()
    rows = aggregate(records)
    out = tmp_path_factory.mktemp("report")
    path = write_report(out, {"data": "shapes", "seeds": [0, 1, 2]}, rows, records, {"torch": "x"})
    return path, rows


# ----- self-contained ------------------------------------------------------------------


@pytest.mark.parametrize(
    "page",
    [
        "<a href='https://example.org/x'>x</a>",  # single quotes
        '<img src="http://example.org/a.png">',
        "<img src=plots/accuracy.png>",  # a relative link, unquoted
        '<img src="plots/accuracy.png">',
        '<script src="//cdn.example.org/lib.js"></script>',
        "<style>@import 'theme.css';</style>",
        '<style>@import url("https://fonts.example.org/f.css");</style>',
        "<div style=\"background:url('bg.png')\"></div>",
        '<svg><use xlink:href="other.svg#icon"/></svg>',
        "<IMG SRC = 'HTTP://EXAMPLE.ORG/A.PNG'>",
    ],
)
def test_checker_finds_every_outside_reference(page):
    assert len(external_references(page)) == 1, page


def test_checker_allows_data_uris_and_fragments():
    page = (
        "<img src='data:image/png;base64,AAAA'><a href=\"#runs\">runs</a>"
        "<svg><use xlink:href='#p1'/></svg><style>p{background:url(data:image/png;base64,AA)}"
        "</style><p>text that says src=x.png is not an attribute? it is: checked</p>"
    )
    assert external_references(page) == ["src=x.png"]
    assert external_references(page.replace("src=x.png", "no link")) == []


def test_report_is_self_contained_and_refuses_outside_links(report, tmp_path, monkeypatch):
    path, rows = report
    text = path.read_text()
    assert external_references(text) == []
    assert text.count("<svg") >= 4
    plots = dict.fromkeys(("gaps", "accuracy_vs_macs", "accuracy_vs_latency", "training_curves"))
    monkeypatch.setattr(report_module, "write_plots", lambda *a: {k: "" for k in plots})
    with pytest.raises(ValueError, match="load from outside"):
        write_report(tmp_path, {}, [], [], {}, extra_sections=[("x", "<img src='a.png'>")])


# ----- content -------------------------------------------------------------------------


def test_findings_paragraph_and_marks(report):
    path, rows = report
    verdicts = {r["model"]: r.get("verdict") for r in rows}
    assert verdicts["vit_pico"] == "worse"
    assert verdicts["convnext_pico"] == "not distinguishable"
    text = findings(rows)
    assert "resnet_pico has the highest mean test top-1" in text
    assert "Differences that hold: vit_pico is worse" in text
    assert (
        "Not distinguishable from the best with these seeds and this test set: convnext_pico"
        in (text)
    )
    assert "seeds + test set" in text
    assert "mixer_pico (NaN)" in text and "kan_pico (budget not reached)" in text
    assert "unstable" in text and "vit_pico" in text.split("unstable")[-1]
    page = path.read_text()
    assert "What the comparison shows" in page and "Gaps to the best model" in page
    assert "(unstable, max/min 1.70)" in page and "failed: 1 NaN" in page
    # the runs table says what happened to each failed run
    assert "<td>mixer_pico</td><td>0</td><td>NaN</td>" in page
    assert "<td>kan_pico</td><td>0</td><td>budget not reached</td>" in page
    assert "Holm" in page and "paired t + paired image bootstrap" in page


def test_accuracy_plot_shows_seeds_and_interval_bars(report):
    _, rows = report
    fig = _scatter(rows, "macs", "MMACs per image (log)", 1e6, log=True)
    try:
        ax = fig.axes[0]
        seeds = [c for c in ax.collections if isinstance(c, PathCollection)]
        plotted = sorted(sorted(float(y) for _, y in c.get_offsets()) for c in seeds)
        expected = sorted(sorted(100 * v for v in r["test_top1_runs"]) for r in rows if r["n"])
        assert plotted == [pytest.approx(e) for e in expected]
        bars = [c for c in ax.collections if isinstance(c, LineCollection)]
        spans = sorted(tuple(sorted(s[:, 1])) for c in bars for s in c.get_segments())
        want = []
        for r in rows[:3]:
            runs = np.array(r["test_top1_runs"])
            var = runs.var(ddof=1) / runs.size + runs.mean() * (1 - runs.mean()) / N_IMAGES
            half = stats.t.ppf(0.975, runs.size - 1) * math.sqrt(var)
            want.append((100 * (runs.mean() - half), 100 * (runs.mean() + half)))
        assert spans == [pytest.approx(w) for w in sorted(want)]
        # the log MACs axis carries readable labels inside its range (18-25 MMACs)
        fig.canvas.draw()
        lo, hi = ax.get_xlim()
        labels = [t.get_text() for t in ax.get_xticklabels() if lo <= t.get_position()[0] <= hi]
        assert len([t for t in labels if t]) >= 2, labels
        assert ax.get_xscale() == "log" and "%" in ax.get_ylabel()
    finally:
        plt.close(fig)


def test_gap_plot_shows_each_interval_in_percentage_points(report):
    _, rows = report
    fig = _gaps(rows)
    try:
        ax = fig.axes[0]
        segs = sorted(
            tuple(sorted(s[:, 0]))
            for c in ax.collections
            if isinstance(c, LineCollection)
            for s in c.get_segments()
        )
        want = sorted(
            (100 * r["comparison"]["ci_low"], 100 * r["comparison"]["ci_high"])
            for r in rows
            if r.get("comparison")
        )
        assert segs == [pytest.approx(w) for w in want]
        assert "percentage points" in ax.get_xlabel()
    finally:
        plt.close(fig)


# ----- a real browser ------------------------------------------------------------------


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("CI"):
        pytest.fail("CI is set but no chromium binary is on PATH (.ci/run installs it)")
    pytest.skip("no chromium binary on PATH: install chromium to render the report in a browser")


class _Text(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.title, self.cells, self.paragraphs, self.svgs = "", [], [], 0
        self._stack: list[str] = []
        self._buf: list[str] = []

    def handle_starttag(self, tag, attrs):
        self._stack.append(tag)
        self.svgs += tag == "svg"
        if tag in ("td", "p", "title"):
            self._buf = []

    def handle_endtag(self, tag):
        text = "".join(self._buf).strip()
        if tag == "title":
            self.title = text
        elif tag == "td":
            self.cells.append(text)
        elif tag == "p":
            self.paragraphs.append(text)
        if self._stack and self._stack[-1] == tag:
            self._stack.pop()

    def handle_data(self, data):
        self._buf.append(data)


def test_report_renders_in_headless_chromium(report, tmp_path):
    from PIL import Image

    chromium = _chromium()
    path, _ = report
    base = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1200,1600",
    ]
    shot = tmp_path / "report.png"
    url = path.resolve().as_uri()
    subprocess.run([*base, f"--screenshot={shot}", url], capture_output=True, timeout=120)
    dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    parsed = _Text()
    parsed.feed(dom.stdout)
    assert parsed.title == "archbench comparison"
    assert {"resnet_pico", "vit_pico", "convnext_pico", "worse", "not distinguishable"} <= set(
        parsed.cells
    )
    assert any(
        p.startswith("resnet_pico has the highest mean test top-1") for p in parsed.paragraphs
    )
    assert parsed.svgs >= 4  # gap plot, two accuracy plots, training curves
    image = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert image.shape == (1600, 1200)
    assert image.std() > 20  # not a blank page
    assert (image < 128).mean() > 0.01  # text and plots in dark ink


def test_compare_runs_record_per_image_results(tmp_path):
    """Two small training runs of a comparison: per-image bits stored and used for the verdict."""
    from archbench.bench.compare import CompareSpec, plan_runs, train_run

    spec = CompareSpec.from_dict(
        dict(
            models=["resnet_pico", "mixer_pico"],
            data="shapes:n_train=64,n_val=32,n_test=40",
            epochs=1,
            explain=False,
            out=str(tmp_path / "cmp"),
        )
    )
    runs, _ = plan_runs(spec)
    records = [train_run(cfg, spec.out, threads=1) for cfg in runs]
    for r in records:
        assert r["status"] == "completed"
        right = unpack_correct(r["test_correct"])
        assert right.size == r["test_n"] == 40
        assert right.mean() == pytest.approx(r["test_top1"])
    rows = aggregate(records)
    (compared,) = [r for r in rows if r.get("comparison")]
    # one seed each: the interval covers the test set's noise, and says so
    assert compared["comparison"]["test"] == "paired image bootstrap"
    assert compared["comparison"]["noise"].startswith("test set only")
    assert compared["comparison"]["n_images"] == 40 and compared["verdict"] != "noise unknown"
