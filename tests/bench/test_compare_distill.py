"""The distillation axis of compare (and `archbench distill`): methods against no KD."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from archbench.bench.compare import CompareSpec, plan_runs
from archbench.bench.leaderboard import distill_gains
from archbench.cli import main

TINY = "shapes:n_train=32,n_val=16,n_test=16,img_size=16,num_classes=4"


def test_plan_has_teacher_baseline_and_each_method(tmp_path):
    spec = CompareSpec.from_dict(
        dict(
            models=["vit_pico", "resnet_pico"],
            data=TINY,
            seeds=2,
            out=str(tmp_path / "d"),
            distill={"teacher": "resnet_pico", "methods": ["kd", {"name": "kd", "args": {}}]},
        )
    )
    with pytest.raises(ValueError, match=r"'kd\(\)' is listed twice with the same arguments"):
        plan_runs(spec)
    spec.distill["methods"] = ["kd"]
    runs, _ = plan_runs(spec)
    teacher = [r for r in runs if r.get("role") == "teacher"]
    assert len(teacher) == 1 and teacher[0]["recipe"]["task"] == "classification"
    students = [r for r in runs if r.get("role") != "teacher"]
    assert sorted({r["entry"] for r in students}) == [
        "resnet_pico + kd",
        "resnet_pico + no KD",
        "vit_pico + kd",
        "vit_pico + no KD",
    ]
    assert len(students) == 2 * 2 * 2
    kd = [r for r in students if r["method"] == "kd"]
    assert {r["recipe"]["task_args"]["teacher"] for r in kd} == {
        str((tmp_path / "d" / "runs").resolve() / f"resnet_pico-seed0-{teacher[0]['key']}")
    }


def test_distill_command_reports_gains_with_paired_intervals(tmp_path):
    out = tmp_path / "d"
    argv = ["distill", "--teacher", "resnet_pico", "--student", "vit_pico", "--method", "kd"]
    argv += ["--method-arg", "kd:temperature=2", "--data", TINY, "--epochs", "1", "--seeds", "2"]
    assert main([*argv, "--out", str(out)]) == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {r.get("entry") for r in records} == {
        "resnet_pico (teacher)",
        "vit_pico + no KD",
        "vit_pico + kd",
    }
    kd = {r["seed"]: r["test_top1"] for r in records if r.get("method") == "kd"}
    base = {r["seed"]: r["test_top1"] for r in records if r.get("method") == "no KD"}
    assert all(r["task_args"].get("temperature") == 2 for r in records if r.get("method") == "kd")
    a, b = np.array([kd[s] for s in range(2)]), np.array([base[s] for s in range(2)])
    (row,) = distill_gains(records)
    assert row["gain"] == pytest.approx(float(np.mean(a - b)))
    assert row["comparison"]["noise"] == "seeds + test set"  # per-image results recorded
    (seeds_only,) = distill_gains(records, test_set_noise=False)
    if np.std(a - b) > 0:  # scipy's paired t-test gives the same interval over seeds
        ci = stats.ttest_rel(a, b).confidence_interval(0.95)
        assert (seeds_only["ci_low"], seeds_only["ci_high"]) == pytest.approx((ci.low, ci.high))
        assert row["ci_high"] - row["ci_low"] >= ci.high - ci.low  # test-set noise adds width
    board = (out / "leaderboard.md").read_text()
    assert "## Gain over no distillation" in board and "| vit_pico | kd | 2 |" in board
    assert "Gain over no distillation" in (out / "report.html").read_text()


def test_gain_verdicts_at_the_interval_boundary():
    def records(diffs):
        out = []
        for seed, d in enumerate(diffs):
            out.append(
                dict(status="completed", model="s", method="no KD", seed=seed, test_top1=0.5)
            )
            out.append(
                dict(status="completed", model="s", method="m", seed=seed, test_top1=0.5 + d)
            )
        return out

    diffs = [0.02, 0.03, 0.04]
    half = stats.t.ppf(0.975, 2) * np.std(diffs, ddof=1) / math.sqrt(3)
    (row,) = distill_gains(records(diffs))
    assert row["ci_low"] == pytest.approx(0.03 - half) and row["verdict"] == "better"
    shifted = [d - 0.03 + half * 1.01 for d in diffs]  # lower end just above zero
    assert distill_gains(records(shifted))[0]["verdict"] == "better"
    shifted = [d - 0.03 + half * 0.99 for d in diffs]  # lower end just below zero
    assert distill_gains(records(shifted))[0]["verdict"] == "not distinguishable"
    assert distill_gains(records([-d for d in diffs]))[0]["verdict"] == "worse"
