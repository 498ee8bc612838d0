import math

from archbench.bench.leaderboard import (
    aggregate,
    leaderboard_markdown,
    leaderboard_text,
    within_noise,
)
from archbench.bench.report import pareto_front


def _rec(model, seed, acc, status="completed"):
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
    }


def test_mean_std_and_order():
    rows = aggregate(
        [_rec("a", 0, 0.50), _rec("a", 1, 0.52), _rec("b", 0, 0.60), _rec("b", 1, 0.62)]
    )
    assert [r["model"] for r in rows] == ["b", "a"]
    assert math.isclose(rows[0]["test_top1"], 0.61)
    assert math.isclose(rows[0]["test_top1_std"], math.sqrt(2) / 100)


def test_noise_marking():
    close = aggregate(
        [_rec("a", 0, 0.60), _rec("a", 1, 0.64), _rec("b", 0, 0.61), _rec("b", 1, 0.65)]
    )
    assert close[1]["vs_best"].endswith("(within noise)")
    far = aggregate(
        [_rec("a", 0, 0.60), _rec("a", 1, 0.605), _rec("b", 0, 0.80), _rec("b", 1, 0.805)]
    )
    assert far[1]["vs_best"] == "-20.00 (outside noise)"  # percentage points
    single = aggregate([_rec("a", 0, 0.60), _rec("b", 0, 0.70)])
    assert "noise unknown" in single[1]["vs_best"]
    assert within_noise(single[0], single[1]) is None


def test_failed_runs_are_listed_not_hidden():
    rows = aggregate(
        [
            _rec("a", 0, 0.60),
            {"model": "b", "seed": 0, "status": "failed_nan", "error": "loss is nan"},
        ]
    )
    assert rows[-1]["model"] == "b" and rows[-1]["n"] == 0
    md = leaderboard_markdown(rows)
    assert "failed" in md and "loss is nan" in md
    assert "b" in leaderboard_text(rows)


def test_pareto_front():
    pts = [(1.0, 50.0), (2.0, 60.0), (3.0, 55.0), (0.5, 40.0), (2.0, 59.0)]
    assert pareto_front(pts) == [3, 0, 1]
