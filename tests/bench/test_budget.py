import pytest

from archbench.bench.budget import Budget, parse_budget, scale_to_budget, width_args_of
from archbench.models import UnknownModelError


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
