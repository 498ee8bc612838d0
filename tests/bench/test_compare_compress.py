"""The compression axis of compare: every trained run compressed by each method, measured
before and after, and set beside its uncompressed run with paired statistics."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from archbench.bench.compare import CompareSpec, plan_runs, run_compare
from archbench.bench.compress_axis import compress_gains, compress_gains_markdown
from archbench.bench.stats import unpack_correct
from archbench.data import load_dataset
from archbench.runs import load_trained
from archbench.train import evaluate

TINY = "shapes:n_train=64,n_val=16,n_test=32,img_size=16,num_classes=4"
FAST = {"latency_repeats": 3, "throughput_seconds": 0.05}


def _spec(tmp_path, compress, **kw):
    d = dict(models=["resnet_pico"], data=TINY, epochs=1, seeds=2, explain=False)
    d.update(out=str(tmp_path / "c"), compress=compress, **kw)
    return CompareSpec.from_dict(d)


def test_plan_adds_one_entry_per_method_and_checks_methods_first(tmp_path):
    methods = [{"name": "structured", "args": {"ratio": 0.5}}, "pt2e_int8"]
    runs, _ = plan_runs(_spec(tmp_path, {"methods": methods, **FAST}))
    base = [r for r in runs if "compress" not in r]
    comp = [r for r in runs if "compress" in r]
    assert len(base) == 2 and len(comp) == 4
    assert sorted({r["entry"] for r in comp}) == [
        "resnet_pico + pt2e_int8",
        "resnet_pico + structured",
    ]
    assert {r["base_key"] for r in comp} == {r["key"] for r in base}
    assert len({r["key"] for r in runs}) == 6
    # a bad method, argument value or key fails at planning, before any training
    with pytest.raises(ValueError, match="unknown compression method 'strucured'"):
        plan_runs(_spec(tmp_path, {"methods": ["strucured"]}))
    with pytest.raises(ValueError, match="ratio"):
        plan_runs(_spec(tmp_path, {"methods": [{"name": "structured", "args": {"ratio": 1.5}}]}))
    with pytest.raises(ValueError, match="unknown compress key"):
        plan_runs(_spec(tmp_path, {"methods": ["structured"], "finetune": 1}))
    with pytest.raises(ValueError, match="cannot be combined"):
        _spec(tmp_path, {"methods": ["structured"]}, pretrain={"methods": ["rotnet"]})


def test_compress_axis_end_to_end(tmp_path):
    spec = _spec(tmp_path, {"methods": [{"name": "structured", "args": {"ratio": 0.5}}], **FAST})
    res = run_compare(spec, log=lambda *a: None)
    records = [json.loads(line) for line in (tmp_path / "c" / "results.jsonl").open()]
    base = {r["seed"]: r for r in records if "compress" not in r["config"]}
    comp = {r["seed"]: r for r in records if "compress" in r["config"]}
    assert sorted(base) == sorted(comp) == [0, 1]
    data = load_dataset(TINY, seed=0)
    for seed, r in comp.items():
        assert r["status"] == "completed" and r["entry"] == "resnet_pico + structured"
        assert r["params"] < 0.5 * base[seed]["params"]  # physically smaller
        assert r["before"]["params"] == base[seed]["params"]
        # the recorded accuracy is the saved compressed model's, evaluated independently
        model, _ = load_trained(r["run_dir"])
        assert sum(p.numel() for p in model.parameters()) == r["params"]
        ev = evaluate(model, data, split="test", per_sample=True)
        assert r["test_top1"] == pytest.approx(ev["top1"])
        assert (unpack_correct(r["test_correct"]) == ev["correct"].numpy()).all()
        assert r["before"]["top1"] == pytest.approx(base[seed]["test_top1"])
        assert r["reproduce"].startswith("archbench compress ") and "ratio=0.5" in r["reproduce"]
    (row,) = res["compression"]
    diffs = [comp[s]["test_top1"] - base[s]["test_top1"] for s in (0, 1)]
    assert row["change"] == pytest.approx(np.mean(diffs))
    assert row["comparison"]["noise"] == "seeds + test set"  # per-image hits of both sides
    assert row["macs_speedup"] == pytest.approx(
        np.median([base[s]["macs"] / comp[s]["macs"] for s in (0, 1)])
    )
    board = (tmp_path / "c" / "leaderboard.md").read_text()
    assert "## Compression: accuracy and measured speed-up" in board
    assert "| resnet_pico | structured | fp32 | 2 |" in board
    # resume: nothing left to run, the records are not duplicated
    lines = []
    run_compare(spec, log=lines.append)
    assert "0 to run" in lines[0]
    assert len((tmp_path / "c" / "results.jsonl").read_text().splitlines()) == 4
    # --remeasure takes the uncompressed runs again; compressed figures are the compress step's
    run_compare(spec, log=lambda *a: None, remeasure=True)
    again = [json.loads(line) for line in (tmp_path / "c" / "results.jsonl").open()]
    assert sorted(r["params"] for r in again if "compress" in r["config"]) == sorted(
        r["params"] for r in comp.values()
    )


def _record(seed, top1, compress=None, **speed):
    cfg = {"compress": {"label": compress}} if compress else {}
    r = {"status": "completed", "model": "m", "seed": seed, "test_top1": top1, "config": cfg}
    if compress:
        r["speedup"] = speed
        r["simulated"] = speed.pop("simulated", False)
    return r


def test_gains_are_paired_t_intervals_and_flag_macs_only_speedups():
    base = [0.70, 0.74, 0.66, 0.72]
    pruned = [0.68, 0.73, 0.61, 0.70]
    records = [_record(s, b) for s, b in enumerate(base)]
    for s, p in enumerate(pruned):
        records.append(_record(s, p, "slow", macs_speedup=2.0 + s, latency_speedup=1.0 + 0.01 * s))
        records.append(_record(s, p, "fast", macs_speedup=2.0, latency_speedup=1.6))
        records.append(_record(s, p, "fake", macs_speedup=2.0, latency_speedup=0.5, simulated=True))
    rows = {r["method"]: r for r in compress_gains(records)}
    d = np.array(pruned) - np.array(base)
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    slow = rows["slow"]
    assert slow["change"] == pytest.approx(d.mean())
    assert (slow["ci_low"], slow["ci_high"]) == pytest.approx((d.mean() - half, d.mean() + half))
    p = stats.ttest_rel(pruned, base).pvalue
    assert slow["p_adjusted"] == pytest.approx(min(1.0, 3 * p))  # Holm over 3 equal p-values
    assert slow["macs_speedup"] == pytest.approx(3.5) and slow["latency_speedup"] == pytest.approx(
        1.015
    )
    assert slow["macs_only"] and not rows["fast"]["macs_only"] and not rows["fake"]["macs_only"]
    assert rows["fake"]["arithmetic"] == "simulated"
    table = compress_gains_markdown(list(rows.values()))
    assert "| x3.50 | x1.02 (MACs only) |" in table and "| x2.00 | x1.60 |" in table
