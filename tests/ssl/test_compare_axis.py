"""Pretraining method and probe as an axis of ``compare``, and the shipped P250 preset."""

from __future__ import annotations

import json

import pytest

from archbench.bench.compare import CompareSpec, plan_runs, run_compare
from archbench.bench.presets import load_preset

TINY = "shapes:n_train=48,n_val=16,n_test=24,img_size=16,num_classes=4"


def _spec(tmp_path, **pretrain):
    return CompareSpec(
        models=["resnet_pico"],
        data=TINY,
        epochs=1,
        seeds=[0, 1],
        pretrain={
            "methods": ["rotnet"],
            "probe": {"kind": "both", "weight_decays": [1e-2], "ks": [3]},
            **pretrain,
        },
        explain=False,
        measure_batch=4,
        out=str(tmp_path / "cmp"),
    )


def test_plan_has_one_run_per_entry_and_seed(tmp_path):
    runs, _ = plan_runs(_spec(tmp_path))
    entries = sorted({(r["entry"], r["recipe"]["task"]) for r in runs})
    assert entries == [
        ("resnet_pico + random init", "classification"),
        ("resnet_pico + rotnet", "rotnet"),
        ("resnet_pico + supervised", "classification"),
    ]
    assert len(runs) == 6 and all(r["probe"]["ks"] == [3] for r in runs)
    assert len({r["key"] for r in runs}) == 6


@pytest.mark.parametrize(
    "pretrain, match",
    [
        ({"methods": ["rotnett"]}, "unknown --method 'rotnett'"),
        ({"methods": ["simclr_v2_finetune"]}, "needs labels"),
        ({"methods": ["rotnet"], "baselines": ["imagenet"]}, "unknown pretrain baseline"),
        ({"methods": ["rotnet"], "probe": {"kind": "svm"}}, "probe kind"),
        ({"methods": [{"name": "rotnet", "args": {"nosuch": 1}}]}, "no argument"),
    ],
)
def test_bad_pretrain_axis_fails_before_training(tmp_path, pretrain, match):
    spec = _spec(tmp_path)
    spec.pretrain = pretrain
    with pytest.raises(ValueError, match=match):
        plan_runs(spec)


def test_compare_runs_the_axis_and_probes_every_entry(tmp_path):
    spec = _spec(tmp_path, baselines=["random"])
    spec.seeds = [0]
    res = run_compare(spec, log=lambda *a: None)
    records = [json.loads(line) for line in (tmp_path / "cmp" / "results.jsonl").open()]
    assert len(records) == 2 and all(r["status"] == "completed" for r in records)
    for r in records:
        assert r["probe_kind"] == "linear" and r["test_top1"] == r["probe_linear_top1"]
        assert 0 <= r["probe_knn_top1"] <= 1 and r["test_n"] == 24
    random = [r for r in records if r["method"] == "random init"]
    assert all("history" not in r for r in random)  # nothing trained
    text = (tmp_path / "cmp" / "leaderboard.md").read_text()
    assert "resnet_pico + rotnet" in text and "resnet_pico + random init" in text
    assert res["rows"]


def test_p250_preset_plans():
    spec = load_preset("ssl-pretext-linear-eval")
    assert spec.pretrain["methods"] == ["rotnet", "context_prediction"]
    assert spec.models == ["resnet_pico", "resnet_nano", "vgg_pico"]
    # plan on tiny data (the preset's own set takes long to generate); 32x32 as vgg_pico needs
    spec.data = TINY.replace("img_size=16", "img_size=32")
    runs, _ = plan_runs(spec)
    # 3 backbones x (2 pretexts + random + supervised) x 3 seeds
    assert len(runs) == 3 * 4 * 3
