"""Input sizes: every model takes the sizes its architecture can process and refuses the
rest with a message that names the nearest sizes that work (and those must work)."""

from __future__ import annotations

import re

import pytest
import torch

from archbench.models import create_model, get_model_card, list_models
from archbench.models._base import check_img_size, nearest_sides

CPU_MODELS = list_models(scale="cpu")
NAMED = re.compile(r"nearest working sizes?: (\d+)x(\d+)(?: and (\d+)x(\d+))?")
REBUILD = re.compile(r"rebuild with img_size=(\d+) ")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _logits(model: torch.nn.Module, h: int, w: int) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.randn(1, model.in_chans, h, w))


def _assert_runs(model: torch.nn.Module, h: int, w: int) -> None:
    y = _logits(model, h, w)
    assert y.shape == (1, model.num_classes), (h, w, tuple(y.shape))
    assert torch.isfinite(y).all(), (h, w)


def _named_sizes(message: str) -> list[tuple[int, int]]:
    found = NAMED.search(message)
    assert found, f"the refusal names no working size: {message}"
    values = [int(v) for v in found.groups() if v is not None]
    return [(values[i], values[i + 1]) for i in range(0, len(values), 2)]


@pytest.mark.parametrize("name", CPU_MODELS)
def test_every_size_runs_or_is_refused_naming_sizes_that_run(name):
    card = get_model_card(name).img_size
    torch.manual_seed(0)
    model = create_model(name, num_classes=7).eval()
    _assert_runs(model, card, card)
    for h, w in [(28, 28), (40, 40), (48, 48), (card + 8, card + 8), (24, 40)]:
        try:
            _assert_runs(model, h, w)
        except ValueError as err:
            message = str(err)
            for size in _named_sizes(message):
                assert size != (h, w)
                _assert_runs(model, *size)
            rebuild = REBUILD.search(message)
            if rebuild and h == w:  # a model tied to its img_size says how to take this one
                assert int(rebuild.group(1)) == h
                _assert_runs(create_model(name, num_classes=7, img_size=h).eval(), h, h)


@pytest.mark.parametrize("name", ["resnet_pico", "resnet50"])
def test_resnets_take_the_sizes_users_feed_them(name):
    if name == "resnet50":  # shapes only: no memory, no arithmetic
        with torch.device("meta"):
            model = create_model(name).eval()
        for side in (28, 112, 224, 299):
            with torch.no_grad():
                y = model(torch.empty(1, 3, side, side, device="meta"))
            assert y.shape == (1, 1000)
    else:
        model = create_model(name, num_classes=5).eval()
        for side in (28, 112, 224, 299):
            _assert_runs(model, side, side)
        _assert_runs(model, 30, 45)


def test_refusals_name_the_nearest_size_below_and_above():
    model = create_model("parnet_pico").eval()  # its downsampling blocks need even maps
    with pytest.raises(ValueError, match="multiples of 16") as err:
        _logits(model, 40, 40)
    assert _named_sizes(str(err.value)) == [(32, 32), (48, 48)]
    with pytest.raises(ValueError) as err:
        _logits(model, 40, 32)  # a side that works is kept
    assert _named_sizes(str(err.value)) == [(32, 32), (48, 32)]
    with pytest.raises(ValueError, match="at least 16") as err:
        _logits(create_model("convnext_pico").eval(), 9, 9)
    assert _named_sizes(str(err.value)) == [(16, 16)]  # nothing smaller works


def test_models_tied_to_their_grid_say_how_to_rebuild():
    vit = create_model("vit_pico").eval()  # 4x4 patches, learned position embedding
    with pytest.raises(ValueError, match=r"built for img_size=\(32, 32\)") as err:
        _logits(vit, 48, 48)
    assert _named_sizes(str(err.value)) == [(32, 32)]
    assert "rebuild with img_size=48" in str(err.value)
    with pytest.raises(ValueError, match=r"cannot be built for 30; .*: 28 or 32"):
        _logits(vit, 30, 30)


def test_constructors_accept_the_sizes_forward_accepts():
    for name in ("resnet_pico", "convnext_pico", "xcit_pico", "cvt_pico", "t2t_vit_pico"):
        model = create_model(name, img_size=28, num_classes=3).eval()
        _assert_runs(model, 28, 28)
    with pytest.raises(ValueError, match="at least 9"):
        create_model("allconv_pico", img_size=8)


def test_check_img_size_names_the_nearest_valid_sides():
    assert check_img_size(224, 16, "m") == (224, 224)
    with pytest.raises(ValueError, match=r"multiple of 16 .*nearest valid: 224 or 240"):
        check_img_size((230, 224), 16, "m")
    with pytest.raises(ValueError, match=r"at least 32 .*nearest valid: 32\)"):
        check_img_size(20, 1, "m", min_size=32)
    assert nearest_sides(40, lambda s: s % 16 == 0) == (32, 48)
    assert nearest_sides(3, lambda s: s >= 16) == (None, 16)
