import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from archbench.bench.budget import Budget, parse_budget, scale_to_budget, width_args_of
from archbench.models import UnknownModelError, create_model, get_model_card, list_models
from archbench.models.resnet import ResNet


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
