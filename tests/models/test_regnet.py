"""RegNet: the quantized linear rule reproduces the released stage widths and depths."""

from __future__ import annotations

import math

import pytest
import torch

from archbench.models import create_model
from archbench.models.regnet import REGNET_PARAMS, regnet_block_widths, regnet_stages

# stage widths and depths of the released models (paper Figures 15-16 / release)
EXPECTED = {
    "regnetx_400mf": ([32, 64, 160, 384], [1, 2, 7, 12]),
    "regnetx_1600mf": ([72, 168, 408, 912], [2, 4, 10, 2]),
    "regnety_400mf": ([48, 104, 208, 440], [1, 3, 6, 6]),
    "regnety_1600mf": ([48, 120, 336, 888], [2, 6, 17, 2]),
    "regnetx_002": ([24, 56, 152, 368], [1, 1, 4, 7]),
    "regnety_002": ([24, 56, 152, 368], [1, 1, 4, 7]),
    "regnety_040": ([128, 192, 512, 1088], [2, 6, 12, 2]),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_generator_reproduces_stage_widths_and_depths(name):
    w_0, w_a, w_m, d, g = REGNET_PARAMS[name]
    widths, depths, groups = regnet_stages(w_0, w_a, w_m, d, g)
    assert (widths, depths) == EXPECTED[name]
    assert sum(depths) == d
    assert all(w % gw == 0 for w, gw in zip(widths, groups))


def test_block_widths_are_quantized_powers_of_w_m():
    w_0, w_a, w_m, d = 24, 24.48, 2.54, 22
    ws = regnet_block_widths(w_0, w_a, w_m, d)
    assert ws == sorted(ws) and all(w % 8 == 0 for w in ws)
    for j, w in enumerate(ws):
        s = round(math.log((w_0 + w_a * j) / w_0) / math.log(w_m))
        assert abs(w - w_0 * w_m**s) <= 4  # rounding to the nearest multiple of 8


def test_models_follow_the_generated_stages_and_only_y_has_se():
    for name, (widths, depths) in EXPECTED.items():
        with torch.device("meta"):
            model = create_model(name)
        assert [len(s) for s in model.stages] == depths
        assert [s[-1].conv3.conv.out_channels for s in model.stages] == widths
        has_se = not isinstance(model.stages[0][0].se, torch.nn.Identity)
        assert has_se == name.startswith("regnety")
    se = create_model("regnety_400mf").stages[1][0].se
    assert se.fc1.out_channels == 12  # round(0.25 * 48), the block's input width


def test_bad_design_parameters_fail_clearly():
    with pytest.raises(ValueError, match="w_m > 1"):
        regnet_block_widths(24, 24.0, 1.0, 10)


# published parameter counts of the released models (pycls / timm), in millions
@pytest.mark.parametrize(
    "name, millions, se",
    [("regnetx_002", 2.68, False), ("regnety_002", 3.16, True), ("regnety_040", 20.65, True)],
)
def test_small_and_4gf_variants_match_the_released_counts(name, millions, se):
    with torch.device("meta"):
        model = create_model(name)
    n = sum(p.numel() for p in model.parameters())
    assert abs(n / 1e6 - millions) / millions < 0.005
    has_se = any(type(m).__name__ == "SqueezeExcite" for m in model.modules())
    assert has_se == se
