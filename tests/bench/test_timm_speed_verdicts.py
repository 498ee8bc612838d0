"""The verdicts of benchmarks/timm_speed.py, against the t interval written out."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

ROOT = Path(__file__).resolve().parents[2]


def _script():
    sys.path.insert(0, str(ROOT / "benchmarks"))  # it imports timm_parity beside it
    try:
        spec = importlib.util.spec_from_file_location(
            "timm_speed", ROOT / "benchmarks" / "timm_speed.py"
        )
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return mod


def test_geometric_mean_interval_and_p_value():
    ratios = [1.10, 0.97, 1.05, 1.02, 0.99, 1.08]
    got = _script().ratio_statistics(ratios)
    logs = np.log(ratios)
    n = len(logs)
    se = logs.std(ddof=1) / math.sqrt(n)
    t = stats.t.ppf(0.975, n - 1)
    assert got["geo_mean"] == pytest.approx(math.exp(logs.mean()))
    assert got["ci95"] == pytest.approx(
        [math.exp(logs.mean() - t * se), math.exp(logs.mean() + t * se)]
    )
    t_stat = logs.mean() / se
    assert got["p"] == pytest.approx(2 * stats.t.sf(abs(t_stat), n - 1))


def test_verdicts_are_holm_adjusted_and_name_the_faster_library():
    mod = _script()
    rows = [
        {"archbench": "a", "inf": {"ratios": [1.30, 1.31, 1.29, 1.30, 1.32]}},  # clearly faster
        {"archbench": "b", "inf": {"ratios": [0.80, 0.81, 0.79, 0.80, 0.82]}},  # clearly slower
        {"archbench": "c", "inf": {"ratios": [1.00, 1.01, 0.99, 1.00, 1.005]}},  # tight, no gap
        {"archbench": "d", "inf": {"ratios": [0.8, 1.3, 0.9, 1.2, 1.0]}},  # too noisy to say
        {"archbench": "e", "inf": {"skipped": "no 32x32"}},
        {"archbench": "f", "inf": {"ratios": [0.99, 1.12, 1.0, 1.08, 0.99]}},  # high side wide
    ]
    mod.add_verdicts(rows, ["inf"])
    verdicts = {r["archbench"]: r["inf"].get("stats", {}).get("verdict") for r in rows}
    assert verdicts == {
        "a": "archbench faster",
        "b": "timm faster",
        "c": "within 5%",
        "d": "not resolved",
        "e": None,
        "f": "not resolved",
    }
    lo, hi = rows[5]["inf"]["stats"]["ci95"]
    assert lo > 0.95 and hi > 1.05
    # Holm over the five timed cases: the smallest p-value is multiplied by 5
    p = [r["inf"]["stats"]["p"] for r in rows if "stats" in r["inf"]]
    smallest = int(np.argmin(p))
    timed = [r for r in rows if "stats" in r["inf"]]
    assert timed[smallest]["inf"]["stats"]["p_holm"] == pytest.approx(min(1.0, 5 * p[smallest]))
