"""Training recipes: one validated dataclass, YAML/JSON round-trip, named recipes shipped
in ``archbench/recipes/*.yaml``."""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

__all__ = ["Recipe", "list_recipes", "load_recipe"]

_CHOICES = {
    "optimizer": ("sgd", "adamw"),
    "schedule": ("cosine", "constant"),
    "crop": ("rrc", "pad", "none"),
    "precision": ("fp32", "bf16"),
}


@dataclass(frozen=True)
class Recipe:
    """Everything about how a model is trained, apart from the model and the data.

    ``lr`` is the peak learning rate at ``batch_size`` (no implicit scaling). Weight decay
    skips norms, biases and the names in ``model.no_weight_decay()``. The schedule warms
    up linearly from ``warmup_lr_ratio * lr`` over ``warmup_epochs`` and then follows a
    cosine down to ``min_lr_ratio * lr``, updated every step. ``drop_path_rate`` and
    ``drop_rate`` are recorded here and passed by the caller when it builds the model.
    ``task`` names what a training step computes (a registered task, see
    :mod:`archbench.train.tasks`) and ``task_args`` its arguments, both validated here.
    """

    name: str = "custom"
    description: str = ""
    epochs: int = 10
    batch_size: int = 128
    eval_batch_size: int = 256
    optimizer: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    warmup_lr_ratio: float = 0.01
    min_lr_ratio: float = 0.01
    grad_clip: float = 0.0
    label_smoothing: float = 0.1
    crop: str = "pad"
    crop_scale: tuple[float, float] = (0.35, 1.0)
    crop_ratio: tuple[float, float] = (0.75, 1.3333333)
    crop_pad: int = 4
    hflip: float = 0.5
    cutout: int = 0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0
    switch_prob: float = 0.5
    drop_path_rate: float = 0.0
    drop_rate: float = 0.0
    ema: bool = False
    ema_decay: float = 0.999
    precision: str = "fp32"
    seed: int = 0
    deterministic: bool = True
    checkpoint_every_steps: int = 0
    task: str = "classification"
    task_args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            fixed = _check_type(f.name, value, hints[f.name])
            if fixed is not value:
                object.__setattr__(self, f.name, fixed)
        for key, choices in _CHOICES.items():
            if getattr(self, key) not in choices:
                raise ValueError(
                    f"recipe {key}={getattr(self, key)!r} is not one of {', '.join(choices)}"
                )
        positive = ("epochs", "batch_size", "eval_batch_size", "lr")
        for key in positive:
            if not getattr(self, key) > 0:
                raise ValueError(f"recipe {key} must be > 0, got {getattr(self, key)}")
        unit = (
            "hflip",
            "mix_prob",
            "switch_prob",
            "drop_path_rate",
            "drop_rate",
            "warmup_lr_ratio",
            "min_lr_ratio",
            "momentum",
            "ema_decay",
        )
        for key in unit:
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"recipe {key} must be in [0, 1], got {getattr(self, key)}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(
                f"recipe label_smoothing must be in [0, 1), got {self.label_smoothing}"
            )
        for key in (
            "weight_decay",
            "grad_clip",
            "warmup_epochs",
            "mixup_alpha",
            "cutmix_alpha",
            "eps",
            "cutout",
            "crop_pad",
            "checkpoint_every_steps",
        ):
            if getattr(self, key) < 0:
                raise ValueError(f"recipe {key} must be >= 0, got {getattr(self, key)}")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(
                f"recipe crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}"
            )
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(
                f"recipe crop_ratio must satisfy 0 < min <= max, got {self.crop_ratio}"
            )
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"recipe betas must be in [0, 1), got {self.betas}")
        from .tasks import check_task

        try:
            check_task(self.task, self.task_args)
        except (ValueError, TypeError) as err:
            raise type(err)(f"recipe {err}") from None

    # ----- conversion --------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recipe:
        if not isinstance(d, dict):
            raise TypeError(f"a recipe must be a mapping of keys to values, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if "extra" in unknown:
            raise ValueError(
                "recipe key 'extra' was replaced by 'task' and 'task_args' "
                "(the technique's registered name and its arguments)"
            )
        if unknown:
            raise ValueError(
                f"unknown recipe key(s) {', '.join(map(str, unknown))}; accepted: {', '.join(sorted(known))}"
            )
        return cls(**d)

    def replace(self, **changes: Any) -> Recipe:
        """A copy with some fields changed (validated like any recipe)."""
        return Recipe.from_dict({**self.to_dict(), **changes})

    @classmethod
    def from_file(cls, path: str | Path) -> Recipe:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"recipe file {str(p)!r} does not exist")
        text = p.read_text()
        try:
            d = json.loads(text) if p.suffix.lower() == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as err:
            raise ValueError(
                f"recipe file {str(p)!r} is not valid {p.suffix[1:] or 'YAML'}: {err}"
            ) from None
        try:
            return cls.from_dict(d or {})
        except (ValueError, TypeError) as err:
            raise type(err)(f"{p}: {err}") from None

    def to_file(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        d = self.to_dict()
        text = (
            json.dumps(d, indent=2) + "\n"
            if p.suffix.lower() == ".json"
            else yaml.safe_dump(d, sort_keys=False)
        )
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(p)
        return p

    # ----- derived -----------------------------------------------------------------
    def lr_at(self, step: int, steps_per_epoch: int) -> float:
        """Learning rate at optimizer step ``step`` (0-based)."""
        total = max(1, self.epochs * steps_per_epoch)
        warm = min(total, int(round(self.warmup_epochs * steps_per_epoch)))
        if step < warm:
            r = self.warmup_lr_ratio + (1 - self.warmup_lr_ratio) * step / warm
            return self.lr * r
        if self.schedule == "constant":
            return self.lr
        t = (step - warm) / max(1, total - warm)
        cos = 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * cos)


def _check_type(key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against the annotation; ints are accepted for floats, lists for tuples."""
    origin = typing.get_origin(hint)
    if hint is bool:
        if not isinstance(value, bool):
            raise TypeError(f"recipe {key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"recipe {key} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"recipe {key} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"recipe {key} must be finite, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise TypeError(f"recipe {key} must be a string, got {value!r}")
        return value
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise TypeError(f"recipe {key} must be a list of {len(args)} numbers, got {value!r}")
        return tuple(_check_type(key, v, a) for v, a in zip(value, args))
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise TypeError(f"recipe {key} must be a mapping, got {value!r}")
        return value
    return value


def list_recipes() -> list[str]:
    """Names of the recipes shipped with archbench."""
    files = resources.files("archbench") / "recipes"
    return sorted(p.name[: -len(".yaml")] for p in files.iterdir() if p.name.endswith(".yaml"))


def load_recipe(name_or_path: str | Path | Recipe) -> Recipe:
    """A shipped recipe by name (``cpu-fast``, ``deit``, ``resnet-sgd``) or a YAML/JSON file."""
    if isinstance(name_or_path, Recipe):
        return name_or_path
    text = str(name_or_path)
    if Path(text).is_file():
        return Recipe.from_file(text)
    names = list_recipes()
    if text in names:
        res = resources.files("archbench") / "recipes" / f"{text}.yaml"
        d = yaml.safe_load(res.read_text())
        return Recipe.from_dict(d)
    if text.endswith((".yaml", ".yml", ".json")) or "/" in text:
        raise FileNotFoundError(f"recipe file {text!r} does not exist")
    raise ValueError(
        f"unknown recipe {text!r}; shipped recipes: {', '.join(names)} (or give a YAML/JSON file)"
    )
