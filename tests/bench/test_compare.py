"""archbench compare: spec validation, a tiny end-to-end comparison, skip/resume, failures."""

import json

import pytest

from archbench.bench.compare import CompareSpec, plan_runs, run_compare
from archbench.train import ClassificationTask, Recipe, register_task

TINY = "shapes:n_train=64,n_val=32,n_test=32"


def _spec(tmp_path, **kw):
    base = dict(
        models=["resnet_pico", "mixer_pico"], data=TINY, epochs=1, out=str(tmp_path / "cmp")
    )
    base.update(kw)
    return CompareSpec.from_dict(base)


def test_spec_rejects_unknown_keys_and_wrong_types(tmp_path):
    with pytest.raises(ValueError, match="unknown spec key.*'epoch'"):
        CompareSpec.from_dict({"models": ["resnet_pico"], "epoch": 3})
    with pytest.raises(TypeError, match="'seeds' must be int or list"):
        CompareSpec.from_dict({"models": ["resnet_pico"], "seeds": "three"})
    with pytest.raises(TypeError, match="'jobs' must be int"):
        CompareSpec.from_dict({"models": ["resnet_pico"], "jobs": True})
    with pytest.raises(ValueError, match="needs a 'models' list"):
        CompareSpec.from_dict({"data": "shapes"})
    f = tmp_path / "spec.yaml"
    f.write_text(
        "models: [resnet_pico]\ndata: digits\nseeds: 3\nbudget: params=match:resnet_pico\n"
    )
    spec = CompareSpec.from_file(f)
    assert spec.seed_list == [0, 1, 2] and spec.data == "digits"
    f.write_text("models: [resnet_pico\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        CompareSpec.from_file(f)


def test_unknown_model_fails_before_training(tmp_path):
    spec = _spec(tmp_path, models=["resnet_pico", "convnxt_pico"])
    with pytest.raises(ValueError, match="convnext_pico"):
        run_compare(spec, log=lambda *_: None)
    assert not (tmp_path / "cmp" / "runs").exists()


def test_unreachable_budget_fails_before_training(tmp_path):
    spec = _spec(tmp_path, budget="params=40")
    with pytest.raises(ValueError, match="cannot be scaled"):
        run_compare(spec, log=lambda *_: None)
    assert not (tmp_path / "cmp" / "runs").exists()


def test_matched_params_plan_scales_every_model(tmp_path):
    runs, context = plan_runs(
        _spec(tmp_path, models=["resnet_pico", "convnext_pico"], budget="params=match:resnet_pico")
    )
    target = context["budget_target"]
    for name in ("resnet_pico", "convnext_pico"):
        scaled = context["scaled"][name]
        assert abs(scaled["achieved"] / target - 1) <= 0.05
    assert runs[1]["model_kwargs"] == {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in context["scaled"]["convnext_pico"]["kwargs"].items()
    }
    assert len({r["key"] for r in runs}) == len(runs)


def test_end_to_end_skip_and_resume(tmp_path):
    logs = []
    spec = _spec(tmp_path)
    result = run_compare(spec, log=logs.append)
    out = tmp_path / "cmp"
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["model"] for r in records] == ["resnet_pico", "mixer_pico"]
    for r in records:
        assert r["status"] == "completed"
        assert (
            0 <= r["test_top1"] <= 1 and r["params"] > 0 and r["macs"] > 0 and r["latency_ms"] > 0
        )
        assert r["accuracy_unit"] == "fraction" and r["val_top1"] == max(
            h["val_top1"] for h in r["history"]
        )  # the same unit as the training history
        assert r["config"]["recipe"]["epochs"] == 1 and r["environment"]["torch"]
        assert "--data-seed 0" in r["reproduce"] and "--seed 0" in r["reproduce"]
        assert (out / "runs" / f"{r['model']}-seed0-{r['key']}" / "model.json").is_file()
    html = (out / "report.html").read_text()
    assert "<svg" in html and 'src="http' not in html and 'href="http' not in html
    assert "Explanations (Grad-CAM)" in html and "data:image/png;base64," in html
    for name in ("accuracy_vs_macs", "accuracy_vs_latency", "training_curves"):
        assert (out / "plots" / f"{name}.png").is_file() and (
            out / "plots" / f"{name}.svg"
        ).is_file()
    assert "resnet_pico" in (out / "leaderboard.md").read_text()
    assert "resnet_pico" in result["leaderboard"]

    # re-running the same spec trains nothing
    logs.clear()
    run_compare(spec, log=logs.append)
    assert "2 already complete, 0 to run" in logs[0]
    assert len((out / "results.jsonl").read_text().splitlines()) == 2

    # measuring again on a quieter machine replaces the speed figures, not the accuracy
    logs.clear()
    before = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    run_compare(spec, log=logs.append, remeasure=True)
    after = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sum("measuring" in line for line in logs) == 2
    assert [r["test_top1"] for r in after] == [r["test_top1"] for r in before]
    assert all("load_avg_1m_before" in r["measure_conditions"] for r in after)

    # a run whose record was lost (killed before writing it) is redone, resuming its checkpoint
    lines = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text(lines[0] + "\n" + lines[1][:40])  # a torn last line
    logs.clear()
    run_compare(spec, log=logs.append)
    assert "1 already complete, 1 to run" in logs[0]

    # a different spec in the same folder is refused before anything runs
    with pytest.raises(ValueError, match="different comparison.*epochs"):
        run_compare(_spec(tmp_path, epochs=2), log=lambda *_: None)


def test_a_failing_run_is_recorded_and_others_go_on(tmp_path, monkeypatch):
    import archbench.train as train

    real_fit = train.fit

    def flaky_fit(model, *args, **kwargs):
        if type(model).__name__ == "MlpMixer":
            raise FloatingPointError("loss is nan at step 3")
        return real_fit(model, *args, **kwargs)

    monkeypatch.setattr(train, "fit", flaky_fit)
    result = run_compare(_spec(tmp_path), log=lambda *_: None)
    records = [
        json.loads(line) for line in (tmp_path / "cmp" / "results.jsonl").read_text().splitlines()
    ]
    by_model = {r["model"]: r for r in records}
    assert by_model["resnet_pico"]["status"] == "completed"
    assert (
        by_model["mixer_pico"]["status"] == "error"
        and "loss is nan" in by_model["mixer_pico"]["error"]
    )
    assert "failed" in (tmp_path / "cmp" / "leaderboard.md").read_text()
    assert [r["model"] for r in result["rows"]][0] == "resnet_pico"


@register_task("test_compare_weighted_ce")
class WeightedCE(ClassificationTask):
    """Classification with its loss scaled: a technique with an argument."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale

    def step(self, batch, state):
        out = super().step(batch, state)
        out["loss"] = out["loss"] * self.scale
        return out


def test_the_task_travels_with_every_run(tmp_path):
    spec = _spec(
        tmp_path,
        models=["resnet_pico"],
        task="test_compare_weighted_ce",
        task_args={"scale": 0.5},
        explain=False,
    )
    runs, _ = plan_runs(spec)
    plain, _ = plan_runs(_spec(tmp_path, models=["resnet_pico"], explain=False))
    assert runs[0]["recipe"]["task"] == "test_compare_weighted_ce"
    assert runs[0]["recipe"]["task_args"] == {"scale": 0.5}
    assert runs[0]["key"] != plain[0]["key"]  # a different technique is a different run
    run_compare(spec, log=lambda *_: None)
    record = json.loads((tmp_path / "cmp" / "results.jsonl").read_text().splitlines()[0])
    assert record["task"] == record["config"]["recipe"]["task"] == "test_compare_weighted_ce"
    assert record["task_args"] == {"scale": 0.5}
    reproduce_recipe = record["reproduce"].split("--recipe ")[1].split()[0]
    assert Recipe.from_file(reproduce_recipe).task_args == {"scale": 0.5}
    with pytest.raises(ValueError, match="unknown task 'nosuch'"):
        plan_runs(_spec(tmp_path, task="nosuch"))
    with pytest.raises(ValueError, match="accepted: scale"):
        plan_runs(_spec(tmp_path, task="test_compare_weighted_ce", task_args={"sale": 1}))
