"""The rules that fit a recipe to its data: warm-up in steps and capped, batch size for
small data, flips only for mirror-invariant data, all shown in the frozen recipe."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from archbench.data import load_dataset
from archbench.models import create_model
from archbench.train import Recipe, fit, load_recipe


def _data(n_train: int, mirror: bool = True) -> SimpleNamespace:
    """What ``Recipe.for_data`` reads of a dataset: the training split's length and the flag."""
    return SimpleNamespace(train=range(n_train), mirror_invariant=mirror)


def test_warmup_is_capped_at_a_fraction_of_the_run():
    r = Recipe(lr=1.0, epochs=3, warmup_epochs=1.0, warmup_lr_ratio=0.0, min_lr_ratio=0.0)
    assert r.warmup_max_frac == 0.1
    assert r.schedule_steps(25) == (75, 7)  # one epoch would be 25 of 75 steps; 10% is 7
    # linear warm-up over 7 steps, then the cosine over the 68 that remain (formula here)
    assert r.lr_at(0, 25) == 0.0
    assert r.lr_at(3, 25) == pytest.approx(3 / 7)
    assert r.lr_at(7, 25) == pytest.approx(1.0)
    assert r.lr_at(40, 25) == pytest.approx(0.5 * (1 + math.cos(math.pi * 33 / 68)))
    uncapped = r.replace(warmup_max_frac=1.0)
    assert uncapped.schedule_steps(25) == (75, 25)
    assert uncapped.lr_at(7, 25) == pytest.approx(7 / 25)
    # a long run keeps the warm-up it asks for
    assert r.replace(epochs=100).schedule_steps(25) == (2500, 25)


def test_fixed_total_steps_set_the_length_and_the_schedule():
    r = Recipe(lr=1.0, epochs=1, total_steps=30, warmup_epochs=0.0, min_lr_ratio=0.0)
    resolved = r.for_data(_data(200))  # batch 128 -> 1 step an epoch without the rule
    assert resolved.batch_size == 128 and resolved.epochs == 30
    assert resolved.resolved["total_steps"] == 30
    assert resolved.lr_at(15, 1) == pytest.approx(0.5 * (1 + math.cos(math.pi * 15 / 30)))


def test_small_data_gets_smaller_batches_and_a_scaled_learning_rate():
    adamw = Recipe(batch_size=128, lr=2e-3, min_steps_per_epoch=50, min_batch_size=16)
    r = adamw.for_data(_data(3200))  # 25 steps at 128, 50 at 64
    assert r.batch_size == 64 and r.lr == pytest.approx(2e-3 * math.sqrt(0.5), rel=1e-5)
    assert r.resolved["steps_per_epoch"] == 50
    assert r.resolved["written"] == {"batch_size": 128, "lr": 2e-3}
    assert any(rule.startswith("batch_size 128 -> 64") for rule in r.resolved["rules"])
    assert adamw.for_data(_data(3199)).batch_size == 32  # 49 steps at 64 is still too few
    sgd = adamw.replace(optimizer="sgd", lr=0.1).for_data(_data(3200))
    assert sgd.batch_size == 64 and sgd.lr == pytest.approx(0.05)  # linear for SGD
    floor = adamw.for_data(_data(100))
    assert floor.batch_size == 16 and floor.resolved["steps_per_epoch"] == 6  # min_batch_size
    big = adamw.for_data(_data(100_000))
    assert big.batch_size == 128 and big.lr == 2e-3 and big.resolved["written"] == {}
    assert Recipe(batch_size=128).for_data(_data(3200)).batch_size == 128  # rule off: 0


def test_flips_only_for_mirror_invariant_data():
    r = Recipe(hflip=0.5)
    assert r.for_data(_data(1000, mirror=True)).hflip == 0.5
    digits_like = r.for_data(_data(1000, mirror=False))
    assert digits_like.hflip == 0.0 and digits_like.resolved["written"] == {"hflip": 0.5}
    assert "not mirror-invariant" in digits_like.resolved["rules"][0]


def test_adapt_false_keeps_the_recipe_as_written():
    r = Recipe(epochs=3, batch_size=128, hflip=0.5, min_steps_per_epoch=50, adapt=False)
    kept = r.for_data(_data(300, mirror=False))
    assert (kept.batch_size, kept.lr, kept.hflip) == (128, r.lr, 0.5)
    assert kept.resolved["warmup_steps"] == 0  # still capped: 10% of 3 x 2 steps is 0


def test_resolving_again_starts_from_the_written_values():
    r = load_recipe("cpu-fast")
    small, large = _data(3200, mirror=False), _data(50_000)
    once = r.for_data(small)
    assert once.for_data(small) == once
    assert once.for_data(large) == r.for_data(large)
    assert Recipe.from_dict(once.to_dict()) == once


def test_too_little_data_for_one_batch_fails_with_the_fix():
    with pytest.raises(ValueError, match="fewer than one batch of 16; lower batch_size"):
        Recipe(batch_size=16).for_data(_data(10))


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("warmup_max_frac", 1.5, "warmup_max_frac must be in"),
        ("min_steps_per_epoch", -1, "min_steps_per_epoch must be >= 0"),
        ("min_batch_size", 0, "min_batch_size must be >= 1"),
        ("total_steps", -3, "total_steps must be >= 0"),
        ("adapt", "yes", "adapt must be true or false"),
    ],
)
def test_bad_rule_settings_fail_with_the_key(key, value, match):
    with pytest.raises((ValueError, TypeError), match=match):
        Recipe.from_dict({key: value})


def test_shipped_recipes_apply_the_rules():
    for name in ("cpu-fast", "deit", "resnet-sgd"):
        r = load_recipe(name)
        assert r.adapt and r.min_steps_per_epoch == 50 and r.warmup_max_frac == 0.1


def _folder(root, n_per_class=12, size=16):
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(n_per_class):
            px = rng.integers(0, 255, (size, size), dtype=np.uint8)
            Image.fromarray(px).save(root / c / f"{i}.png")
    return root


def test_datasets_say_whether_they_are_mirror_invariant(tmp_path):
    root = _folder(tmp_path / "imgs")
    assert load_dataset(f"folder:{root},img_size=16").mirror_invariant is False
    assert load_dataset(f"folder:{root},img_size=16,flip=1").mirror_invariant is True
    assert load_dataset("digits").mirror_invariant is False
    assert load_dataset("digits:flip=1").mirror_invariant is True
    shapes = load_dataset("shapes:n_train=16,n_val=8,n_test=8,img_size=16")
    assert shapes.mirror_invariant is True and shapes.describe()["mirror_invariant"] is True
    np.savez(tmp_path / "a.npz", x=np.zeros((20, 8, 8), np.uint8), y=np.arange(20) % 2)
    assert load_dataset(f"npz:{tmp_path / 'a.npz'}").mirror_invariant is False


def test_a_run_on_folder_data_trains_and_freezes_the_resolved_recipe(tmp_path):
    data = load_dataset(f"folder:{_folder(tmp_path / 'imgs')},img_size=16", seed=0)
    torch.manual_seed(0)
    model = create_model("resnet_pico", num_classes=2, img_size=16)
    recipe = load_recipe("cpu-fast").replace(epochs=1)
    res = fit(model, data, recipe, tmp_path / "run", progress=False)
    frozen = Recipe.from_file(tmp_path / "run" / "recipe.yaml")
    n_train = len(data.train)
    assert frozen.hflip == 0.0 and frozen.batch_size == 16
    assert res.steps == n_train // 16
    assert frozen.resolved["n_train"] == n_train and frozen.resolved["written"]["hflip"] == 0.5
