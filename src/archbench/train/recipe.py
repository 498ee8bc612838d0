"""Training recipes: one validated dataclass, YAML/JSON round-trip, named recipes shipped
in ``archbench/recipes/*.yaml``, and the rules that fit a recipe to the data it trains on.

:meth:`Recipe.for_data` resolves a recipe against a dataset before training (``fit`` calls
it, so the frozen ``recipe.yaml`` of every run holds the resolved values):

1. Length in steps. ``steps_per_epoch = n_train // batch_size`` (the last partial batch
   is dropped); ``total_steps`` is ``epochs x steps_per_epoch`` unless the recipe fixes
   ``total_steps`` (a steps or training-compute budget), in which case ``epochs`` becomes
   ``ceil(total_steps / steps_per_epoch)`` and the last epoch stops at ``total_steps``.
2. Warm-up in steps, capped. ``warmup_steps = min(round(warmup_epochs x steps_per_epoch),
   floor(warmup_max_frac x total_steps))``: a one-epoch warm-up cannot take a third of a
   three-epoch run. The cosine decay spans the remaining steps.
3. Batch size for small data (``adapt``). While an epoch would have fewer than
   ``min_steps_per_epoch`` steps and the batch is above ``min_batch_size``, the batch is
   halved. The learning rate follows the batch: linearly for SGD (Goyal et al., 2017,
   "Accurate, Large Minibatch SGD"), with the square root for AdamW (Malladi et al., 2022,
   "On the SDEs and Scaling Rules for Adaptive Gradient Algorithms").
4. Horizontal flips only for mirror-invariant data (``adapt``). A dataset says whether it
   is (``DataBundle.mirror_invariant``): ``shapes`` and CIFAR are, ``digits`` is not, and
   ``folder:`` / ``npz:`` data is not unless its spec says so (``flip=1``). Otherwise
   ``hflip`` is set to 0.

``adapt: false`` keeps batch size, learning rate and flips exactly as written (rules 1
and 2 always apply: they only express the schedule in steps). What the rules changed is
listed in the recipe's ``resolved`` mapping, with the values as written, so resolving a
resolved recipe again (for the same or for other data) starts from the written values.
"""

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
    "precision": ("fp32", "bf16", "fp16"),
}


@dataclass(frozen=True)
class Recipe:
    """Everything about how a model is trained, apart from the model and the data.

    ``lr`` is the peak learning rate at ``batch_size`` (no implicit scaling). Weight decay
    skips norms, biases and the names in ``model.no_weight_decay()``. The schedule warms
    up linearly from ``warmup_lr_ratio * lr`` over ``warmup_epochs`` and then follows a
    cosine down to ``min_lr_ratio * lr``, updated every step. ``layer_decay`` below 1
    scales each layer's learning rate by ``layer_decay ** (num_layers - layer_id)``
    (layer-wise decay for fine-tuning, see :func:`archbench.train.optim.layer_ids`). ``drop_path_rate`` and
    ``drop_rate`` are recorded here and passed by the caller when it builds the model.
    ``task`` names what a training step computes (a registered task, see
    :mod:`archbench.train.tasks`) and ``task_args`` its arguments, both validated here.
    ``precision`` is the autocast of the training and validation steps (``fp32``: none;
    ``bf16``; ``fp16``, with a gradient scaler, on CUDA only); ``channels_last`` stores the
    model and the input batches in NHWC order; ``compile`` trains ``torch.compile(model)``;
    ``onednn_linear`` runs the model's ``nn.Linear`` layers, forward and backward, on
    oneDNN on the CPU (:func:`archbench.layers.onednn_linear.onednn_linears`).
    The device is not part of the recipe: ``fit(..., device=)`` or ``archbench train
    --device`` (see docs/training.md, "Devices and precision").
    """

    name: str = "custom"
    description: str = ""
    epochs: int = 10
    batch_size: int = 128
    eval_batch_size: int = 256
    optimizer: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 0.05
    layer_decay: float = 1.0
    momentum: float = 0.9
    nesterov: bool = True
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    warmup_max_frac: float = 0.1
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
    channels_last: bool = False
    compile: bool = False
    onednn_linear: bool = False
    seed: int = 0
    deterministic: bool = True
    checkpoint_every_steps: int = 0
    total_steps: int = 0
    adapt: bool = True
    min_steps_per_epoch: int = 0
    min_batch_size: int = 16
    task: str = "classification"
    task_args: dict[str, Any] = field(default_factory=dict)
    resolved: dict[str, Any] = field(default_factory=dict)

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
            "warmup_max_frac",
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
            "total_steps",
            "min_steps_per_epoch",
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
        if self.min_batch_size < 1:
            raise ValueError(f"recipe min_batch_size must be >= 1, got {self.min_batch_size}")
        if not 0.0 < self.layer_decay <= 1.0:
            raise ValueError(
                f"recipe layer_decay must be in (0, 1] (1 turns it off; BEiT fine-tunes "
                f"with 0.65-0.75), got {self.layer_decay}"
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
        if d["layer_decay"] == 1.0:  # off: recipes (and run keys) read as they did before it
            del d["layer_decay"]
        for key in ("channels_last", "compile", "onednn_linear"):  # likewise when off
            if not d[key]:
                del d[key]
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
    def schedule_steps(self, steps_per_epoch: int) -> tuple[int, int]:
        """(total optimizer steps, warm-up steps) of a run with ``steps_per_epoch``.

        The warm-up is ``warmup_epochs`` of steps, capped at ``warmup_max_frac`` of the run.
        """
        total = self.total_steps or self.epochs * steps_per_epoch
        total = max(1, total)
        warm = int(round(self.warmup_epochs * steps_per_epoch))
        return total, min(warm, int(math.floor(self.warmup_max_frac * total)))

    def lr_at(self, step: int, steps_per_epoch: int) -> float:
        """Learning rate at optimizer step ``step`` (0-based)."""
        total, warm = self.schedule_steps(steps_per_epoch)
        if step < warm:
            r = self.warmup_lr_ratio + (1 - self.warmup_lr_ratio) * step / warm
            return self.lr * r
        if self.schedule == "constant":
            return self.lr
        t = (step - warm) / max(1, total - warm)
        cos = 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * cos)

    def for_data(self, data: Any) -> Recipe:
        """This recipe resolved against ``data`` (a ``DataBundle``): see the module docstring.

        Only ``len(data.train)`` and ``data.mirror_invariant`` (default true) are read.
        """
        written = dict(self.resolved.get("written", {}))
        base = self.replace(**written, resolved={}) if written else self.replace(resolved={})
        n_train = len(data.train)
        mirror = bool(getattr(data, "mirror_invariant", True))
        changes: dict[str, Any] = {}
        notes: list[str] = []
        batch = base.batch_size
        if base.adapt and base.min_steps_per_epoch > 0:
            while n_train // batch < base.min_steps_per_epoch and batch // 2 >= base.min_batch_size:
                batch //= 2
            if batch != base.batch_size:
                power = 1.0 if base.optimizer == "sgd" else 0.5
                lr = base.lr * (batch / base.batch_size) ** power
                changes.update(batch_size=batch, lr=float(f"{lr:.6g}"))
                notes.append(
                    f"batch_size {base.batch_size} -> {batch}: {n_train} training images give "
                    f"{n_train // base.batch_size} steps per epoch, fewer than "
                    f"min_steps_per_epoch={base.min_steps_per_epoch}; lr {base.lr:g} -> "
                    f"{changes['lr']:g} ({'linear' if power == 1 else 'square-root'} scaling "
                    f"for {base.optimizer})"
                )
        if base.adapt and not mirror and base.hflip > 0:
            changes["hflip"] = 0.0
            notes.append(
                f"hflip {base.hflip:g} -> 0: the data is not mirror-invariant (add flip=1 to "
                "the data spec if it is, or set adapt: false)"
            )
        spe = n_train // batch
        if spe < 1:
            raise ValueError(
                f"the training split has {n_train} images, fewer than one batch of {batch}; "
                "lower batch_size or add images"
            )
        if base.total_steps:
            epochs = -(-base.total_steps // spe)
            if epochs != base.epochs:
                changes["epochs"] = epochs
                notes.append(
                    f"epochs {base.epochs} -> {epochs}: total_steps={base.total_steps} at "
                    f"{spe} steps per epoch (the last epoch stops at total_steps)"
                )
        resolved = base.replace(**changes)
        total, warm = resolved.schedule_steps(spe)
        asked = int(round(resolved.warmup_epochs * spe))
        if warm < asked:
            notes.append(
                f"warm-up {asked} -> {warm} steps: capped at warmup_max_frac="
                f"{resolved.warmup_max_frac:g} of {total} steps"
            )
        info = {
            "n_train": n_train,
            "mirror_invariant": mirror,
            "steps_per_epoch": spe,
            "total_steps": total,
            "warmup_steps": warm,
            "rules": notes,
            "written": {k: getattr(base, k) for k in changes},
        }
        info["written"] = {
            k: list(v) if isinstance(v, tuple) else v for k, v in info["written"].items()
        }
        return resolved.replace(resolved=info)


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
