from __future__ import annotations

import math

import pytest

from archbench.train import ClassificationTask, Recipe, list_recipes, load_recipe, register_task


@register_task("test_recipe_weighted")
class WeightedTask(ClassificationTask):
    def __init__(self, weight: float = 1.0, note: str = ""):
        super().__init__()
        self.weight, self.note = weight, note


def test_shipped_recipes_load():
    names = list_recipes()
    assert {"cpu-fast", "deit", "resnet-sgd"} <= set(names)
    assert load_recipe("resnet-sgd").optimizer == "sgd" and load_recipe("resnet-sgd").nesterov
    deit = load_recipe("deit")
    assert deit.optimizer == "adamw" and deit.mixup_alpha == 0.8 and deit.ema
    with pytest.raises(ValueError, match="shipped recipes: .*cpu-fast"):
        load_recipe("fast-please")


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_round_trip(tmp_path, suffix):
    r = Recipe(
        epochs=3,
        lr=0.01,
        betas=(0.8, 0.99),
        crop="rrc",
        task="test_recipe_weighted",
        task_args={"weight": 0.5, "note": "x"},
    )
    path = r.to_file(tmp_path / f"r{suffix}")
    back = Recipe.from_file(path)
    assert back == r and isinstance(back.betas, tuple)
    assert load_recipe(str(path)) == r


def test_task_and_its_arguments_are_validated():
    assert Recipe().task == "classification" and Recipe().task_args == {}
    with pytest.raises(
        ValueError, match="unknown task 'distil'; registered tasks: .*classification"
    ):
        Recipe(task="distil")
    with pytest.raises(ValueError, match="no argument.*wieght; accepted: weight, note"):
        Recipe(task="test_recipe_weighted", task_args={"wieght": 2})
    with pytest.raises(ValueError, match="no argument.*alpha; accepted: none"):
        Recipe(task_args={"alpha": 1})
    with pytest.raises(TypeError, match="task_args must be a mapping"):
        Recipe.from_dict({"task_args": [1, 2]})
    with pytest.raises(ValueError, match="'extra' was replaced by 'task' and 'task_args'"):
        Recipe.from_dict({"extra": {}})


def test_validation_names_the_key(tmp_path):
    with pytest.raises(ValueError, match="unknown recipe key.*lr_max.*accepted"):
        Recipe.from_dict({"lr_max": 1})
    with pytest.raises(TypeError, match="recipe epochs must be an integer"):
        Recipe.from_dict({"epochs": "ten"})
    with pytest.raises(TypeError, match="recipe nesterov must be true or false"):
        Recipe(nesterov=1)
    with pytest.raises(ValueError, match="optimizer='lamb' is not one of sgd, adamw"):
        Recipe(optimizer="lamb")
    with pytest.raises(ValueError, match="hflip must be in"):
        Recipe(hflip=2.0)
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 3\nwarmup: 2\n")
    with pytest.raises(ValueError, match="bad.yaml.*warmup"):
        Recipe.from_file(bad)
    assert Recipe(lr=1).lr == 1.0  # ints accepted for floats


def test_schedule_warmup_then_cosine():
    r = Recipe(lr=1.0, epochs=10, warmup_epochs=1, warmup_lr_ratio=0.0, min_lr_ratio=0.0)
    spe = 10
    assert r.lr_at(0, spe) == 0.0
    assert r.lr_at(5, spe) == pytest.approx(0.5)
    assert r.lr_at(10, spe) == pytest.approx(1.0)
    mid = 10 + 45
    assert r.lr_at(mid, spe) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert r.lr_at(100, spe) == pytest.approx(0.0, abs=1e-12)
    assert Recipe(schedule="constant", lr=0.3, warmup_epochs=0).lr_at(50, 10) == 0.3
