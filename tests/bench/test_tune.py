"""compare --tune: the same Optuna search for every model, on validation only."""

import dataclasses
import functools
import json

import pytest

import archbench.bench.compare as compare_module
from archbench.bench.compare import CompareSpec, run_compare
from archbench.cli import main
from archbench.data import ImageTensorDataset
from archbench.train import Recipe

TINY = "shapes:n_train=64,n_val=32,n_test=32"


class _TestSplitTripwire(ImageTensorDataset):
    """The test split, whose images and labels raise while ``armed`` (its size may be read:
    the data's description states it)."""

    armed = True
    reads: list = []

    def __getattribute__(self, name):
        if name in ("images", "labels", "masks") and type(self).armed:
            type(self).reads.append(name)
            raise AssertionError(f"the test split was read ({name}) while tuning")
        return super().__getattribute__(name)

    def __len__(self):
        return len(object.__getattribute__(self, "images"))


def _spec(tmp_path, **kw):
    base = dict(
        models=["resnet_pico", "mixer_pico"],
        data=TINY,
        epochs=1,
        explain=False,
        measure_batch=8,
        tune={"params": ["lr", "weight_decay"], "trials": 3, "seed": 0},
        out=str(tmp_path / "cmp"),
    )
    base.update(kw)
    return CompareSpec.from_dict(base)


def test_tuning_never_reads_the_test_split_and_the_seeds_train_with_the_best(tmp_path, monkeypatch):
    real_load = compare_module.load_run_data.__wrapped__

    def load_with_tripwire(data, data_seed):
        bundle = real_load(data, data_seed)
        wired = _TestSplitTripwire.__new__(_TestSplitTripwire)
        wired.__dict__.update(bundle.test.__dict__)
        return dataclasses.replace(bundle, test=wired)

    monkeypatch.setattr(
        compare_module, "load_run_data", functools.lru_cache(maxsize=1)(load_with_tripwire)
    )
    monkeypatch.setattr(_TestSplitTripwire, "reads", [])
    real_execute = compare_module.execute_runs

    def final_runs(*args, **kwargs):  # tuning is over: the reported number may read test
        monkeypatch.setattr(_TestSplitTripwire, "armed", False)
        return real_execute(*args, **kwargs)

    monkeypatch.setattr(compare_module, "execute_runs", final_runs)
    logs = []
    run_compare(_spec(tmp_path), log=logs.append)
    assert _TestSplitTripwire.reads == []  # nothing touched it, not even a caught attempt

    out = tmp_path / "cmp"
    tuning = json.loads((out / "tuning.json").read_text())
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(tuning["models"]) == ["mixer_pico", "resnet_pico"]
    recipe_lr = Recipe.from_file(out / "recipe.yaml").lr
    lr_range = tuning["space"]["lr"]  # the default: the recipe's lr / 10 .. x 10, log scale
    assert lr_range == pytest.approx({"low": recipe_lr / 10, "high": recipe_lr * 10, "log": True})
    for model, search in tuning["models"].items():
        trials = search["trials"]
        assert len(trials) == 3 and search["completed"] == 3
        scores = [t["val_top1"] for t in trials]
        assert search["best_val_top1"] == max(scores)
        best = trials[scores.index(max(scores))]  # the first of the best, by trial number
        assert search["best"] == {"number": best["number"], "params": best["params"]}
        for t in trials:
            assert recipe_lr / 10 <= t["params"]["lr"] <= recipe_lr * 10
            assert 1e-5 <= t["params"]["weight_decay"] <= 0.5
        record = next(r for r in records if r["model"] == model)
        assert record["status"] == "completed"
        assert record["tuned"] == best["params"]
        for key, value in best["params"].items():  # the final seed trained with the best
            assert record["config"]["recipe"][key] == value
        assert "--set lr=" in record["reproduce"]
    # both models saw the same proposals: the same search, the same seeded sampler
    assert [t["params"] for t in tuning["models"]["resnet_pico"]["trials"]][:1] == [
        t["params"] for t in tuning["models"]["mixer_pico"]["trials"]
    ][:1]
    board = (out / "leaderboard.md").read_text()
    assert "Hyper-parameter search, the same for every model" in board
    assert "| resnet_pico | 3/3 |" in board and "| mixer_pico | 3/3 |" in board
    assert "Hyper-parameter search" in (out / "report.html").read_text()
    assert (out / "tune.db").is_file()

    # resumed: the finished search is loaded from tune.db, no trial trains again
    logs.clear()
    run_compare(_spec(tmp_path), log=logs.append)
    assert not any("trial" in line and "val top-1" in line for line in logs)
    assert "2 already complete, 0 to run" in next(line for line in logs if "runs (" in line)


def test_a_bad_search_space_fails_before_work(tmp_path, capsys):
    with pytest.raises(ValueError, match="'lrate' is not a recipe key; tunable recipe keys: .*lr"):
        run_compare(_spec(tmp_path, tune={"params": ["lrate"]}), log=lambda *_: None)
    with pytest.raises(ValueError, match="'epochs' cannot be searched"):
        run_compare(_spec(tmp_path, tune={"params": ["epochs"]}), log=lambda *_: None)
    with pytest.raises(ValueError, match="'grad_clip' has no default range"):
        run_compare(_spec(tmp_path, tune={"params": ["grad_clip"]}), log=lambda *_: None)
    with pytest.raises(ValueError, match="must have 0 <= LOW < HIGH"):
        run_compare(_spec(tmp_path, tune={"params": {"lr": [0.1, 0.01]}}), log=lambda *_: None)
    with pytest.raises(ValueError, match="unknown tune key.*'trails'"):
        run_compare(_spec(tmp_path, tune={"params": ["lr"], "trails": 3}), log=lambda *_: None)
    assert not (tmp_path / "cmp").exists()
    args = ["compare", "resnet_pico", "--data", TINY, "--out", str(tmp_path / "cli")]
    assert main([*args, "--tune", "lr,wd"]) == 2
    assert "'wd' is not a recipe key" in capsys.readouterr().err
    assert main([*args, "--trials", "4"]) == 2
    assert "add --tune" in capsys.readouterr().err
    assert not (tmp_path / "cli").exists()
