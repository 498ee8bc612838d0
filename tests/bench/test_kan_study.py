"""The KAN-vs-MLP study: presets, matched regressors, the symbolic fitter, verdicts."""

import argparse

import pytest
import torch

from archbench.bench.compare import CompareSpec, plan_runs
from archbench.bench.kan_study import (
    SymbolicConfig,
    compare_verdicts,
    fit_regressor,
    kan_regressor,
    match_mlp,
    mlp_flops,
    mlp_regressor,
    n_params,
    symbolic_study,
)
from archbench.bench.presets import list_presets, load_preset
from archbench.kan_tasks import symbolic_regression_data

TINY_SHAPES = "shapes:n_train=16,n_val=8,n_test=8"
EXPECTED = {
    f"{group}-{kind}{suffix}"
    for group in ("kan-vs-mlp", "kanconv-vs-conv")
    for kind in ("params", "flops")
    for suffix in ("", "-digits")
}


def test_presets_are_listed_and_load():
    assert EXPECTED <= set(list_presets())
    spec = load_preset("kan-vs-mlp-params")
    assert isinstance(spec, CompareSpec)
    assert {"kan_mlp_pico", "mlp_pico"} <= set(spec.models)
    assert load_preset("kan-vs-mlp-flops-digits").data == "digits"
    with pytest.raises(ValueError, match="unknown preset.*kan-vs-mlp-params"):
        load_preset("kan-vs-mlp-param")


# Counting MACs of every candidate width is the slow part: the digits FLOPs presets differ
# from the shapes ones only in data (checked below), so only the shapes ones are planned.
PLANNED = sorted(n for n in EXPECTED if not n.endswith("flops-digits"))


def test_digits_flops_presets_mirror_the_shapes_ones():
    for group in ("kan-vs-mlp", "kanconv-vs-conv"):
        shapes = load_preset(f"{group}-flops").to_dict()
        digits = load_preset(f"{group}-flops-digits").to_dict()
        assert digits["data"] == "digits"
        for key in ("models", "budget", "recipe", "seeds"):
            assert digits[key] == shapes[key]


@pytest.mark.parametrize("name", PLANNED)
def test_preset_budgets_scale_every_model(name):
    spec = load_preset(name)
    data = spec.to_dict()
    if spec.data.startswith("shapes"):
        data["data"] = TINY_SHAPES  # same image size, channels and classes, quicker to build
    runs, context = plan_runs(CompareSpec.from_dict(data))
    assert context["budget"]["kind"] in ("params", "flops")
    target = context["budget_target"]
    assert set(context["scaled"]) == set(spec.models)
    for model, scaled in context["scaled"].items():
        assert abs(scaled["achieved"] / target - 1) <= 0.05, (model, scaled)
    assert len(runs) == len(spec.models) * len(spec.seed_list)


def test_compare_command_accepts_a_preset_name(tmp_path):
    from archbench.commands.compare import spec_from_args

    ns = dict(
        models=[],
        data=None,
        recipe=None,
        budget=None,
        epochs=None,
        seeds=1,
        jobs=None,
        out=str(tmp_path),
        no_explain=False,
        model_kwargs=None,
        model_arg=None,
        task=None,
        task_arg=None,
    )
    spec = spec_from_args(argparse.Namespace(spec="kanconv-vs-conv-params", **ns))
    assert spec.models == load_preset("kanconv-vs-conv-params").models
    assert spec.seeds == 1 and spec.out == str(tmp_path)
    with pytest.raises(ValueError, match="neither a file nor a preset"):
        spec_from_args(argparse.Namespace(spec="no-such-preset", **ns))


@pytest.mark.parametrize("widths", [(2, 2, 1), (2, 5, 1), (4, 4, 2, 1)])
def test_matched_regressors_are_within_five_percent(widths):
    kan = kan_regressor(widths, grid_size=10)
    target = n_params(kan)
    width, depth, achieved = match_mlp(widths[0], target, "params")
    mlp = mlp_regressor(widths[0], width, depth)
    assert n_params(mlp) == achieved
    assert abs(n_params(mlp) / target - 1) <= 0.05
    width, depth, achieved = match_mlp(widths[0], 5000, "flops")
    assert mlp_flops(widths[0], width, depth) == achieved
    assert abs(achieved / 5000 - 1) <= 0.05


def test_kan_fits_a_product_with_a_tiny_budget():
    torch.set_num_threads(1)
    x, y = symbolic_regression_data("product", 200, seed=1)
    xt, yt = symbolic_regression_data("product", 200, seed=2)
    torch.manual_seed(0)
    kan = kan_regressor((2, 2, 1), grid_size=3)
    res = fit_regressor(kan, x, y, xt, yt, steps=10, grids=(3, 5))
    assert kan.layers[0].basis.grid_size == 5  # the grid was extended
    assert res["test_rmse"] < 0.03 < float(yt.std())  # about 10x below the target's spread


def test_symbolic_study_rows_and_verdicts():
    cfg = SymbolicConfig(n_train=64, n_test=64, steps=2, grids=(3,))
    out = symbolic_study(seeds=2, config=cfg, formulas=["product"], log=lambda *_: None)
    assert len(out["records"]) == 6  # kan, mlp@params, mlp@flops x 2 seeds
    models = {r["model"]: r for r in out["rows"]}
    assert set(models) == {"kan", "mlp@params", "mlp@flops"}
    assert abs(models["mlp@params"]["params"] / models["kan"]["params"] - 1) <= 0.05
    assert abs(models["mlp@flops"]["flops"] / models["kan"]["flops"] - 1) <= 0.05
    assert all(r["n"] == 2 and r["test_rmse_std"] is not None for r in out["rows"])
    assert {v["matched"] for v in out["verdicts"]} == {"params", "flops"}
    # a second study with the same configuration reuses the fits; another one refits
    logs = []
    again = symbolic_study(2, cfg, ["product"], log=logs.append, previous=out["records"])
    assert logs == ["  product      seed 0: reused", "  product      seed 1: reused"]
    assert again["rows"] == out["rows"]
    logs.clear()
    other = SymbolicConfig(n_train=64, n_test=64, steps=1, grids=(3,))
    symbolic_study(1, other, ["product"], log=logs.append, previous=out["records"])
    assert not any("reused" in line for line in logs)


def test_verdicts_use_seed_noise():
    kan = {"rmse": 0.10, "rmse_std": 0.01, "n": 3}
    far = {"rmse": 0.50, "rmse_std": 0.01, "n": 3}
    near = {"rmse": 0.11, "rmse_std": 0.02, "n": 3}
    assert compare_verdicts(kan, far, "rmse", higher_is_better=False) == "KAN wins"
    assert compare_verdicts(far, kan, "rmse", higher_is_better=False) == "KAN loses"
    assert compare_verdicts(kan, far, "rmse", higher_is_better=True) == "KAN loses"
    assert compare_verdicts(kan, near, "rmse", higher_is_better=False) == "within noise"
    one = {"rmse": 0.5, "rmse_std": None, "n": 1}
    assert compare_verdicts(kan, one, "rmse", higher_is_better=False) == "noise unknown (1 seed)"
