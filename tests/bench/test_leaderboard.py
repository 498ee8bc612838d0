"""Leaderboard: aggregation, verdicts against the best model with Holm, failures and marks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from archbench.bench.leaderboard import (
    aggregate,
    distill_gains,
    leaderboard_markdown,
    leaderboard_text,
    within_noise,
)
from archbench.bench.report import pareto_front
from archbench.bench.stats import holm


def _rec(model, seed, acc, status="completed", **extra):
    return {
        "model": model,
        "seed": seed,
        "status": status,
        "test_top1": acc,
        "val_top1": acc + 0.01,
        "params": 1e6,
        "macs": 2e7,
        "latency_ms": 1.0,
        "throughput": 100.0,
        "peak_memory_mb": 5.0,
        "train_time_s": 10.0,
        **extra,
    }


def _row(rows, model):
    return next(r for r in rows if r["model"] == model)


def test_mean_std_and_order():
    rows = aggregate(
        [_rec("a", 0, 0.50), _rec("a", 1, 0.52), _rec("b", 0, 0.60), _rec("b", 1, 0.62)]
    )
    assert [r["model"] for r in rows] == ["b", "a"]
    assert math.isclose(rows[0]["test_top1"], 0.61)
    assert math.isclose(rows[0]["test_top1_std"], math.sqrt(2) / 100)


# per-seed differences to the best with a fixed spread: p of a paired t-test is set by the gap
DEV = np.array([0.004, -0.002, -0.002])
BEST = np.array([0.80, 0.81, 0.82])


def _gap_for_p(p: float) -> float:
    se = DEV.std(ddof=1) / math.sqrt(3)
    return stats.t.ppf(1 - p / 2, 2) * se


def _records(gaps: dict[str, float]) -> list[dict]:
    out = [_rec("best", s, float(v)) for s, v in enumerate(BEST)]
    for model, gap in gaps.items():
        out += [_rec(model, s, float(v)) for s, v in enumerate(BEST - gap + DEV)]
    return out


def test_holm_turns_two_marginal_gaps_into_not_distinguishable():
    g = _gap_for_p(0.04)  # each comparison alone: p = 0.04 < 0.05
    rows = aggregate(_records({"m1": g, "m2": g * 1.0001}))
    raw = [_row(rows, m)["comparison"]["p"] for m in ("m1", "m2")]
    assert raw == pytest.approx([0.04, 0.04], rel=1e-3)
    assert [_row(rows, m)["comparison"]["p_adjusted"] for m in ("m1", "m2")] == pytest.approx(
        holm(raw)
    )
    assert holm(raw) == pytest.approx([0.08, 0.08], rel=1e-3)
    assert {_row(rows, m)["verdict"] for m in ("m1", "m2")} == {"not distinguishable"}
    # one strong gap and one marginal: Holm multiplies the smallest p by 2, the next by 1
    rows = aggregate(_records({"m1": _gap_for_p(0.001), "m2": _gap_for_p(0.04)}))
    assert _row(rows, "m1")["verdict"] == "worse" and _row(rows, "m2")["verdict"] == "worse"
    assert _row(rows, "m1")["comparison"]["p_adjusted"] == pytest.approx(0.002, rel=1e-3)


def test_paired_verdict_boundary_in_the_table():
    half = _gap_for_p(0.05)  # the 95% half-width of the paired interval
    inside = aggregate(_records({"m": half * 0.98}))
    outside = aggregate(_records({"m": half * 1.02}))
    assert _row(inside, "m")["verdict"] == "not distinguishable"
    assert _row(outside, "m")["verdict"] == "worse"
    comp = _row(outside, "m")["comparison"]
    assert comp["test"] == "paired t" and comp["noise"] == "seeds"
    assert (comp["ci_low"], comp["ci_high"]) == pytest.approx((-half * 2.02, -half * 0.02))
    line = next(ln for ln in leaderboard_markdown(outside).splitlines() if ln.startswith("| m "))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[-4] == f"{-102 * half:+.2f} [{-202 * half:+.2f}, {-2 * half:+.2f}]"
    assert cells[-2] == "worse"


def test_single_seed_is_noise_unknown_and_the_method_is_stated():
    rows = aggregate([_rec("a", 0, 0.60), _rec("b", 0, 0.70)])
    assert rows[1]["vs_best"] == "-10.00 (1 seed: noise unknown)"
    assert rows[1]["verdict"] == "noise unknown"
    md = leaderboard_markdown(rows)
    for words in ("paired t", "Welch", "Holm", "bootstrap over test images", "80% power"):
        assert words in md and words in leaderboard_text(rows)


def test_failed_nan_budget_and_unstable_timings_show_as_such():
    records = [
        _rec("a", 0, 0.60, latency={"unstable": True, "ratio": 1.8}),
        _rec("a", 1, 0.62, throughput_detail={"unstable": False, "ratio": 1.1}),
        _rec("a", 2, float("nan"), status="completed"),
        _rec("c", 0, 0.50, throughput_detail={"unstable": True, "ratio": 1.4}),
        {"model": "b", "seed": 0, "status": "failed_nan", "error": "loss is nan at step 3"},
        {
            "model": "k",
            "seed": 0,
            "status": "error",
            "error": "ValueError: flops budget 2e7 cannot be reached by kan_pico",
        },
    ]
    rows = aggregate(records)
    assert [r["model"] for r in rows] == ["a", "c", "b", "k"]
    assert _row(rows, "a")["n"] == 2  # the NaN run is not averaged in
    md = leaderboard_markdown(rows)
    lines = {ln.split("|")[1].strip(): ln for ln in md.splitlines() if ln.startswith("| ")}
    assert "1.00 (unstable, max/min 1.80)" in lines["a"] and "1 NaN failed" in lines["a"]
    assert "100 (unstable, max/min 1.40)" in lines["c"]
    assert "unstable" not in lines["c"].split("|")[6]  # c's latency is stable
    assert "failed: 1 NaN" in lines["b"] and "loss is nan" in lines["b"]
    assert "failed: 1 budget not reached" in lines["k"]
    assert "max ≤ 1.25 × min" in md
    text = leaderboard_text(rows)
    assert "budget not reached" in text and "(unstable" in text


def test_within_noise_is_welchs_t_not_two_standard_errors():
    a = {"acc": 0.70, "acc_std": 0.02, "n": 3}
    se = math.sqrt(2 * 0.02**2 / 3)
    df = 4.0  # equal spreads and sizes: Welch-Satterthwaite gives n_a + n_b - 2
    crit = stats.t.ppf(0.975, df)  # 2.78, not 2
    inside = {"acc": 0.70 + 0.99 * crit * se, "acc_std": 0.02, "n": 3}
    outside = {"acc": 0.70 + 1.01 * crit * se, "acc_std": 0.02, "n": 3}
    assert within_noise(a, inside, "acc") is True  # 2.75 SE: outside a 2-SE rule
    assert within_noise(a, outside, "acc") is False
    assert within_noise(a, {"acc": 0.5, "acc_std": None, "n": 1}, "acc") is None


def test_distill_gains_use_holm_and_paired_seeds():
    records = []
    g = _gap_for_p(0.04)
    for method in ("kd", "dkd"):
        for s, v in enumerate(BEST):
            records.append(
                dict(status="completed", model="s", method="no KD", seed=s, test_top1=float(v))
            )
            records.append(
                dict(
                    status="completed",
                    model="s",
                    method=method,
                    seed=s,
                    test_top1=float(v + g + DEV[s]),
                )
            )
    rows = distill_gains(records)
    assert [r["method"] for r in rows] == ["dkd", "kd"]
    for r in rows:
        assert r["comparison"]["test"] == "paired t"
        assert r["comparison"]["p"] == pytest.approx(0.04, rel=1e-3)
        assert r["p_adjusted"] == pytest.approx(0.08, rel=1e-3)
        assert r["verdict"] == "not distinguishable"


def test_bad_interval_method():
    with pytest.raises(ValueError, match="unknown interval method 'z'"):
        aggregate([_rec("a", 0, 0.5)], method="z")


def test_pareto_front():
    pts = [(1.0, 50.0), (2.0, 60.0), (3.0, 55.0), (0.5, 40.0), (2.0, 59.0)]
    assert pareto_front(pts) == [3, 0, 1]


def test_compare_spec_takes_the_interval_method_outside_its_identity():
    from archbench.bench.compare import CompareSpec

    with pytest.raises(ValueError, match="interval must be one of t, percentile, bca, got 'z'"):
        CompareSpec.from_dict({"models": ["resnet_pico"], "interval": "z"})
    spec = CompareSpec.from_dict({"models": ["resnet_pico"], "interval": "bca"})
    assert spec.identity() == CompareSpec.from_dict({"models": ["resnet_pico"]}).identity()
