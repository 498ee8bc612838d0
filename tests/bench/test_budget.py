import json
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import archbench.bench.budget as budget_module
from archbench.bench.budget import Budget, parse_budget, scale_to_budget, width_args_of
from archbench.bench.compare import CompareSpec, _reproduce_command, plan_runs, train_run
from archbench.bench.leaderboard import aggregate, leaderboard_markdown
from archbench.data import load_dataset
from archbench.models import UnknownModelError, create_model, get_model_card, list_models
from archbench.models.resnet import ResNet
from archbench.train import Recipe, fit


def _one_cpu_variant_per_family() -> list[str]:
    first: dict[str, str] = {}
    for name in list_models(scale="cpu"):  # sorted
        first.setdefault(get_model_card(name).family, name)
    return sorted(first.values())


CPU_FAMILIES = _one_cpu_variant_per_family()
DATA = dict(num_classes=10, in_chans=3, img_size=32)


def test_parse_budget_forms():
    assert parse_budget(None) == Budget("epochs")
    assert parse_budget("epochs=7") == Budget("epochs", 7.0)
    assert parse_budget("time=90") == Budget("time", 90.0)
    assert parse_budget("params=1.5M") == Budget("params", 1.5e6)
    assert parse_budget("flops=300k") == Budget("flops", 3e5)
    assert parse_budget("params=match:resnet_pico") == Budget("params", None, "resnet_pico")
    assert parse_budget({"kind": "flops", "value": "2M", "tolerance": 0.02}) == Budget(
        "flops", 2e6, None, 0.02
    )


@pytest.mark.parametrize(
    "text,match",
    [
        ("speed=3", "unknown budget"),
        ("params", "needs a value"),
        ("params=lots", "cannot read"),
        ("time=match:resnet_pico", "match: works with"),
        ("epochs=2.5", "whole number"),
        ("params=-1", "cannot read"),
    ],
)
def test_parse_budget_rejects_bad_input(text, match):
    with pytest.raises(ValueError, match=match):
        parse_budget(text)


def test_parse_budget_unknown_reference_model():
    with pytest.raises(UnknownModelError, match="resnet_pico"):
        parse_budget("params=match:resnet_picoo")


def test_width_args_found_from_build_args():
    assert width_args_of("resnet_pico") == {"widths": (16, 32, 64, 128), "stem_width": 16}


@pytest.mark.parametrize("kind,target", [("params", 1e6), ("params", 2.5e5), ("flops", 3e7)])
def test_scale_hits_target_within_tolerance(kind, target):
    scaled = scale_to_budget("resnet_pico", kind, target, img_size=32, in_chans=3, num_classes=10)
    assert abs(scaled.achieved / target - 1) <= 0.05
    assert scaled.kwargs["widths"] != (16, 32, 64, 128) or abs(scaled.multiplier - 1) < 1e-9


def test_scale_reports_unreachable_target():
    with pytest.raises(ValueError, match="cannot be scaled"):
        scale_to_budget("resnet_pico", "params", 50, img_size=32, in_chans=3, num_classes=10)


def test_scaling_keeps_the_comparison_s_other_arguments():
    deep = scale_to_budget(
        "resnet_pico", "params", 1e6, 32, 3, 10, base_kwargs={"layers": (2, 2, 2, 2)}
    )
    shallow = scale_to_budget("resnet_pico", "params", 1e6, 32, 3, 10)
    assert "layers" not in deep.kwargs
    assert abs(deep.rel_error) <= 0.05 and abs(shallow.rel_error) <= 0.05
    # twice the blocks at the same parameter count means narrower stages
    assert deep.kwargs["widths"][-1] < shallow.kwargs["widths"][-1]


def test_nested_stage_widths_are_scaled():
    base = width_args_of("kan_convnet_pico")
    assert isinstance(base["stages"][0], tuple)
    scaled = scale_to_budget("kan_convnet_pico", "params", 2e5, 32, 3, 10)
    assert abs(scaled.rel_error) <= 0.05
    assert [len(s) for s in scaled.kwargs["stages"]] == [len(s) for s in base["stages"]]


def test_a_class_without_width_args_cannot_take_a_matched_budget(monkeypatch):
    monkeypatch.setattr(ResNet, "width_args", ())
    with pytest.raises(ValueError, match="declares no width_args"):
        scale_to_budget("resnet_pico", "params", 1e6, **DATA)
    with pytest.raises(ValueError, match="declares no width_args"):
        width_args_of("resnet_pico")


def test_every_stage_width_is_scaled_not_only_the_stem():
    assert set(width_args_of("halonet_pico")) == {"base_widths", "stem_width"}  # final_width None
    assert set(width_args_of("regnet_pico")) == {"w_0", "w_a", "stem_width"}
    scaled = scale_to_budget("halonet_pico", "params", 3e6, **DATA)
    assert abs(scaled.rel_error) <= 0.05
    assert scaled.kwargs["base_widths"][-1] > 128


def _build(name: str, kwargs: dict) -> torch.nn.Module:
    with torch.device("meta"):
        return create_model(name, **DATA, **kwargs)


def _params(model: torch.nn.Module) -> float:
    return float(sum(p.numel() for p in model.parameters()))


def _macs(model: torch.nn.Module) -> float:
    """Multiply-adds of one forward pass of a 32x32 image, as archbench counts them:
    FlopCounterMode's FLOPs (matmuls, convolutions, attention) / 2, eval mode, batch 1."""
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, DATA["in_chans"], DATA["img_size"], DATA["img_size"], device="meta"))
    return counter.get_total_flops() / 2


@pytest.mark.parametrize("name", CPU_FAMILIES)
def test_matched_params_and_flops_are_met_at_the_data_resolution(name):
    """Scale to 1.5x the model's own size (a target every family's width steps can reach),
    rebuild from the recorded kwargs, and count again independently of the scaler."""
    base = _build(name, {})
    for kind, count in (("params", _params), ("flops", _macs)):
        target = 1.5 * count(base)
        scaled = scale_to_budget(name, kind, target, **DATA)
        achieved = count(_build(name, scaled.kwargs))
        assert abs(achieved / target - 1) <= 0.05, (
            f"{name}: {kind} {achieved:,.0f} vs target {target:,.0f} with {scaled.kwargs}"
        )
        assert achieved == pytest.approx(scaled.achieved, rel=1e-9), (
            "the scaler counted another way"
        )
    # the kwargs survive the JSON a comparison records them in
    recorded = json.loads(json.dumps(scaled.kwargs))
    assert _params(_build(name, recorded)) == _params(_build(name, scaled.kwargs))


# ----- budgets inside a comparison: steps, training compute, independent checks ------

TINY = "shapes:n_train=64,n_val=32,n_test=32"  # 10 classes, 32x32, 3 channels: DATA


def _plan(tmp_path, **kw):
    spec = dict(models=["resnet_pico"], data=TINY, epochs=2, out=str(tmp_path / "cmp"))
    return plan_runs(CompareSpec.from_dict({**spec, **kw}))


def test_parse_steps_and_compute_budgets():
    assert parse_budget("steps=500") == Budget("steps", 500.0)
    assert parse_budget("compute=2e12") == Budget("compute", 2e12)
    assert parse_budget("compute=match:resnet_pico") == Budget("compute", None, "resnet_pico")
    with pytest.raises(ValueError, match="steps must be a whole number"):
        parse_budget("steps=2.5")
    with pytest.raises(ValueError, match="match: works with params, flops and compute"):
        parse_budget("steps=match:resnet_pico")


def test_a_steps_budget_gives_every_model_the_same_optimizer_steps(tmp_path):
    runs, _ = _plan(tmp_path, models=["resnet_pico", "mixer_pico"], budget="steps=7")
    assert {r["recipe"]["total_steps"] for r in runs} == {7}
    # 64 training images at batch 16: 4 steps an epoch, so 2 epochs, the second cut at 7
    recipe = Recipe(epochs=1, batch_size=16, lr=3e-3, total_steps=7, warmup_epochs=0.0)
    data = load_dataset("shapes:n_train=64,n_val=16,n_test=16,img_size=16,num_classes=4")
    torch.manual_seed(0)
    model = create_model("resnet_pico", num_classes=4, img_size=16)
    res = fit(model, data, recipe, tmp_path / "run", progress=False)
    assert res.status == "completed" and res.steps == 7 and res.epochs_completed == 2
    assert len(res.history) == 2
    frozen = Recipe.from_file(tmp_path / "run" / "recipe.yaml")
    assert frozen.epochs == 2 and frozen.resolved["total_steps"] == 7
    # the cosine reaches its end at the last of the 7 steps, not at 2 x 4 = 8
    assert res.history[-1]["lr"] == pytest.approx(
        3e-3 * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 6 / 7)))
    )


def test_a_compute_budget_equalizes_macs_times_images_seen(tmp_path):
    runs, context = _plan(
        tmp_path,
        models=["resnet_pico", "mixer_pico"],
        budget="compute=match:resnet_pico",
        epochs=10,
    )
    by_model = {r["model"]: r for r in runs}
    batch = by_model["resnet_pico"]["recipe"]["batch_size"]
    assert batch == 16  # 64 images: the small-data rule halves 128 down to 16
    macs = {name: _macs(_build(name, {})) for name in by_model}  # counted here, independently
    target = macs["resnet_pico"] * 10 * (64 // batch) * batch
    assert context["budget_target"] == pytest.approx(target)
    for name, run in by_model.items():
        steps = run["recipe"]["total_steps"]
        assert abs(macs[name] * steps * batch / target - 1) <= 0.05, name
        assert run["recipe"]["epochs"] == -(-steps // (64 // batch))
        assert run["budget_check"]["rel_error"] == pytest.approx(
            macs[name] * steps * batch / target - 1
        )
    assert by_model["resnet_pico"]["recipe"]["total_steps"] == 40
    # the mixer costs more per image, so it sees fewer images
    assert by_model["mixer_pico"]["recipe"]["total_steps"] == round(
        target / (macs["mixer_pico"] * batch)
    )
    assert by_model["mixer_pico"]["recipe"]["total_steps"] < 40
    # the one-run reproduce command carries the model's own length
    steps = by_model["mixer_pico"]["recipe"]["total_steps"]
    assert f"--set total_steps={steps}" in _reproduce_command(by_model["mixer_pico"], tmp_path)


def test_a_model_that_cannot_reach_the_budget_is_a_failed_run(tmp_path):
    # 8 steps of resnet_pico are less than 2 steps of the 3.5x costlier mixer: unreachable
    runs, _ = _plan(
        tmp_path, models=["resnet_pico", "mixer_pico"], budget="compute=match:resnet_pico"
    )
    mixer = next(r for r in runs if r["model"] == "mixer_pico")
    assert "mixer_pico cannot be trained to" in mixer["budget_error"]
    assert "budget_error" not in next(r for r in runs if r["model"] == "resnet_pico")
    result = train_run(mixer, str(tmp_path / "cmp"), 1)
    assert result["status"] == "budget_unreachable"
    assert result["error"].startswith("budget not reachable: mixer_pico cannot be trained")
    assert not list((tmp_path / "cmp").rglob("*.safetensors"))  # nothing was trained
    record = {"model": "mixer_pico", "seed": 0, **result}
    board = leaderboard_markdown(aggregate([record]))
    assert "budget not reached" in board


def test_scaled_models_are_counted_again_at_the_data_resolution(tmp_path):
    target = _macs(_build("resnet_pico", {}))  # its own MACs at 32x32 (few builds to search)
    runs, _ = _plan(tmp_path, budget=f"flops={target}")
    counted = _macs(_build("resnet_pico", runs[0]["model_kwargs"]))  # at 32x32, here
    assert abs(counted / target - 1) <= 0.05
    assert runs[0]["budget_check"]["counted"] == counted


def test_a_scaler_counting_at_the_wrong_resolution_is_refused(tmp_path, monkeypatch):
    """The scaler's own count taken at 64 px for 32 px data: the independent count disagrees."""
    real = budget_module._measure

    def at_double_size(name, kwargs, kind, img_size, in_chans, num_classes):
        return real(name, kwargs, kind, 2 * img_size, in_chans, num_classes)

    monkeypatch.setattr(budget_module, "_measure", at_double_size)
    # resnet_pico's own MACs at 64x64: the mistaken scaler meets it at once with the
    # canonical widths, which at the data's 32x32 have a quarter of them
    target = 4 * _macs(_build("resnet_pico", {}))
    with pytest.raises(ValueError, match=r"budget check failed: resnet_pico .* -7\d\.\d% off"):
        _plan(tmp_path, budget=f"flops={target}")
    with pytest.raises(ValueError, match="budget check failed: the reference resnet_pico"):
        _plan(tmp_path, budget="flops=match:resnet_pico")


def test_scaling_widens_every_stage_in_proportion_not_only_the_stem():
    base = width_args_of("resnet_pico")
    target = 4 * _params(_build("resnet_pico", {}))
    scaled = scale_to_budget("resnet_pico", "params", target, **DATA)
    m = scaled.multiplier
    assert 1.7 < m < 2.3  # params grow about as width squared
    old = [*base["widths"], base["stem_width"]]
    new = [*scaled.kwargs["widths"], scaled.kwargs["stem_width"]]
    for w, w_new in zip(old, new):
        assert abs(w_new - w * m) <= 8, (old, new, m)  # each rounded to a multiple of <= 8
