import pytest
import torch

from archbench.models import (
    ModelCard,
    UnknownModelError,
    create_model,
    get_model_card,
    list_families,
    list_models,
    register_model,
)


def test_unknown_model_names_closest_matches():
    with pytest.raises(UnknownModelError, match="resnet50") as err:
        create_model("resnet5O")
    assert "closest registered names" in str(err.value)


def test_unknown_model_without_close_match_still_explains():
    with pytest.raises(UnknownModelError, match="archbench models"):
        create_model("zzzzzzzz")


def test_unknown_kwarg_is_named_with_accepted_list():
    with pytest.raises(TypeError, match="'widthz'") as err:
        create_model("resnet_pico", widthz=3)
    assert "accepted:" in str(err.value) and "num_classes" in str(err.value)


def test_list_models_filters():
    assert "resnet50" in list_models("resnet*")
    assert all(get_model_card(n).family == "resnet" for n in list_models(family="resnet"))
    assert all(get_model_card(n).scale == "cpu" for n in list_models(scale="cpu"))
    assert list_models("no-such-pattern-xyz") == []
    assert "resnet" in list_families()


def test_card_is_attached_and_named():
    model = create_model("resnet_pico")
    assert model.model_card.variant == "resnet_pico"
    assert get_model_card("resnet50").params_m == pytest.approx(25.56)


def test_duplicate_registration_is_refused():
    card = ModelCard("x", "paper", 2020, "cnn", scale="cpu")

    def resnet50(**kwargs):
        raise AssertionError("never built")

    with pytest.raises(ValueError, match="registered twice"):
        register_model(card)(resnet50)


def test_card_validation():
    with pytest.raises(ValueError, match="kind"):
        ModelCard("x", "p", 2020, "transformer")
    with pytest.raises(ValueError, match="params_m"):
        ModelCard("x", "p", 2020, "cnn", scale="canonical")


def test_builder_defaults_are_overridable():
    model = create_model("resnet_pico", num_classes=5, drop_rate=0.2)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)
