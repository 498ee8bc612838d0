"""Training tasks: what one optimizer step computes, as an object the loop calls.

A task owns the step; the loop in :mod:`archbench.train.engine` owns everything else
(batches, augmentation, learning rate, backward, clipping, checkpoints, validation).
Techniques such as distillation, compression or self-supervised pretraining are tasks:
one file each, registered by name, chosen from a recipe (``task: NAME``,
``task_args: {...}``) or the command line (``--task NAME --task-arg K=V``).

The contract (every method optional except ``step``)::

    class MyTask(Task):
        views = 2              # augmented views per image in each batch
        uses_labels = False    # batches carry no labels or targets
        monitor = ("val_loss", "min")   # what picks the best checkpoint

        def __init__(self, dim: int = 64):          # task arguments, validated by name
            super().__init__()
            self.dim = dim

        def setup(self, model, data, recipe):        # before the optimizer is built
            self.trainable["projector"] = nn.Linear(model.num_features, self.dim)

        def step(self, batch, state):                # -> {"loss": tensor, ...logged}
            z = [self.trainable["projector"](state.model.forward_head(
                     state.model.forward_features(v), pre_logits=True)) for v in batch.views]
            return {"loss": (z[0] - z[1]).pow(2).mean()}

Modules added to ``self.trainable`` in ``setup`` are optimized with the model and saved
in checkpoints; modules in ``self.frozen`` (a teacher) are moved to the model's device,
kept in eval mode and never optimized. ``state_dict()`` / ``load_state_dict()`` carry any
further state (a queue, cluster centres, a step counter) through checkpoints, so a
killed run resumes bit for bit. A task may also define any callback hook
(``on_epoch_end`` ...); the loop calls the task's hooks before the callbacks'.

Why not timm's or Lightning's classes: timm's training tasks are tied to its own loop
and Lightning's ``LightningModule`` brings its trainer; archbench's loop is one short
function, so the contract is written here in a few dozen lines.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .optim import param_groups

__all__ = [
    "Batch",
    "ClassificationTask",
    "Task",
    "check_task",
    "classification_metrics",
    "create_task",
    "list_tasks",
    "register_task",
    "soft_cross_entropy",
]


@dataclass
class Batch:
    """One training or validation batch, on the model's device.

    ``views``: the augmented views of the same images, each (B, C, H, W), normalized;
    ``images`` is ``views[0]``, the view that Mixup/CutMix mixed (the others are cropped,
    flipped and normalized only). ``targets``: (B, classes) soft targets of ``images``
    (label smoothing and mixing folded in); ``labels``: (B,) class indices before mixing.
    Both are None for a task with ``uses_labels = False``. ``index``: (B,) position of
    each sample in its split. ``raw``: the uint8 images before augmentation (for tasks
    that augment themselves, e.g. rotations or multi-crop).
    """

    views: list[torch.Tensor]
    targets: torch.Tensor | None
    labels: torch.Tensor | None
    index: torch.Tensor
    raw: torch.Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def images(self) -> torch.Tensor:
        return self.views[0]

    def __len__(self) -> int:
        return int(self.index.shape[0])


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against soft targets (label smoothing, Mixup, CutMix)."""
    return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Sums over a batch: cross-entropy, top-1 and top-k hits (k = min(5, classes)), count."""
    logits = logits.float()
    k = min(5, logits.shape[-1])
    hit = logits.topk(k, dim=-1).indices == labels.view(-1, 1)
    return {
        "loss": float(F.cross_entropy(logits, labels, reduction="sum")),
        "top1": float(hit[:, 0].sum()),
        "top5": float(hit.any(dim=1).sum()),
        "n": float(labels.shape[0]),
    }


class Task:
    """Base class of training tasks; see the module docstring for the contract."""

    name = "task"
    views: int = 1
    uses_labels: bool = True
    monitor: tuple[str, str] = ("val_top1", "max")

    def __init__(self) -> None:
        self.trainable = nn.ModuleDict()
        self.frozen = nn.ModuleDict()
        self.args: dict[str, Any] = {}

    # ----- set-up ------------------------------------------------------------------
    def setup(self, model: nn.Module, data: Any, recipe: Any) -> None:
        """Runs before the optimizer is built: add, wrap or swap modules here."""

    def check(self, model: nn.Module, data: Any) -> None:
        """Fail before training when the model cannot do this task on ``data``."""
        from .evaluate import check_model_data

        check_model_data(model, data, logits=self.uses_labels)

    def param_groups(self, model: nn.Module, recipe: Any) -> list[dict]:
        """Parameter groups of the optimizer: the model's and the trainable modules'."""
        groups = param_groups(model, recipe.weight_decay, getattr(recipe, "layer_decay", 1.0))
        for module in self.trainable.values():
            groups += param_groups(module, recipe.weight_decay)
        return [g for g in groups if g["params"]]

    # ----- steps -------------------------------------------------------------------
    def step(self, batch: Batch, state: Any) -> dict[str, Any]:
        """The training loss of one batch: ``{"loss": scalar tensor, other: value ...}``.

        Every other entry is averaged over the epoch and logged as ``train_<key>``.
        """
        raise NotImplementedError

    def eval_step(self, batch: Batch, state: Any) -> dict[str, float]:
        """Validation metrics of one batch, as means over it; logged as ``val_<key>``."""
        return {"loss": float(self.step(batch, state)["loss"])}

    # ----- state -------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors saved in checkpoints: the trainable modules' weights, plus what a
        subclass adds (override and extend)."""
        return {f"trainable.{k}": v for k, v in self.trainable.state_dict().items()}

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        own = {k[len("trainable.") :]: v for k, v in sd.items() if k.startswith("trainable.")}
        if own or len(self.trainable):
            self.trainable.load_state_dict(own)

    def to(self, device: torch.device) -> Task:
        self.trainable.to(device)
        self.frozen.to(device).eval()
        for p in self.frozen.parameters():
            p.requires_grad_(False)
        return self

    def train(self, mode: bool = True) -> None:
        self.trainable.train(mode)
        self.frozen.eval()

    def describe(self) -> dict[str, Any]:
        return {"task": self.name, "task_args": dict(self.args)}


# ----- the default task --------------------------------------------------------------
class ClassificationTask(Task):
    """Supervised classification: soft cross-entropy on the (mixed) targets, plus the
    model's auxiliary loss (``model.aux_loss(targets)``: MoE load balancing, hierarchical
    prompts). A model that returns several heads' logits in training (DeiT's distillation
    head without a teacher) trains every head on the labels; accuracy uses their mean,
    as inference does."""

    name = "classification"

    def step(self, batch: Batch, state: Any) -> dict[str, Any]:
        model = state.model
        out = model(batch.images)
        heads = list(out) if isinstance(out, (tuple, list)) else [out]
        loss = sum(soft_cross_entropy(h, batch.targets) for h in heads) / len(heads)
        logits = heads[0] if len(heads) == 1 else torch.stack(heads).mean(0)
        result: dict[str, Any] = {"ce": loss.detach()}
        aux_fn = getattr(model, "aux_loss", None)
        aux = aux_fn(batch.targets) if callable(aux_fn) else None
        if aux is not None:
            result["aux_loss"] = aux.detach()
            loss = loss + aux
        result["loss"] = loss
        result["acc"] = (logits.detach().argmax(-1) == batch.labels).float().mean()
        return result

    def eval_step(self, batch: Batch, state: Any) -> dict[str, float]:
        m = classification_metrics(state.model(batch.images), batch.labels)
        n = m.pop("n")
        return {k: v / n for k, v in m.items()}


# ----- registry ----------------------------------------------------------------------
_TASKS: dict[str, type[Task]] = {"classification": ClassificationTask}
# technique packages whose modules register tasks; imported on the first lookup
_TECHNIQUE_PACKAGES = ("archbench.distill", "archbench.compress", "archbench.ssl")
_loaded = False


def register_task(name: str):
    """Class decorator: make a :class:`Task` subclass selectable as ``task: name``."""

    def deco(cls: type[Task]) -> type[Task]:
        if not (isinstance(cls, type) and issubclass(cls, Task)):
            raise TypeError(f"register_task({name!r}) expects a Task subclass, got {cls!r}")
        if name in _TASKS and _TASKS[name] is not cls:
            raise ValueError(f"a task named {name!r} is already registered ({_TASKS[name]})")
        cls.name = name
        _TASKS[name] = cls
        return cls

    return deco


def _load_technique_packages() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for pkg in _TECHNIQUE_PACKAGES:
        if importlib.util.find_spec(pkg) is not None:
            importlib.import_module(pkg)


def list_tasks() -> list[str]:
    """Names of the registered tasks."""
    _load_technique_packages()
    return sorted(_TASKS)


def _resolve(name: str) -> type[Task]:
    if not isinstance(name, str) or not name:
        raise ValueError(f"a task name must be a non-empty string, got {name!r}")
    if ":" in name:  # "package.module:ClassName", for tasks that live outside archbench
        module_name, _, attr = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"cannot import task {name!r}: {err}") from None
        if not (isinstance(cls, type) and issubclass(cls, Task)):
            raise ValueError(f"{name!r} is not a Task subclass")
        return cls
    _load_technique_packages()
    if name not in _TASKS:
        raise ValueError(
            f"unknown task {name!r}; registered tasks: {', '.join(sorted(_TASKS))} "
            "(or give package.module:ClassName)"
        )
    return _TASKS[name]


def task_arguments(name: str) -> dict[str, Any]:
    """The arguments a task accepts, with their defaults (``inspect.Parameter.empty``
    when required)."""
    sig = inspect.signature(_resolve(name).__init__)
    return {
        p.name: p.default
        for p in list(sig.parameters.values())[1:]
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def check_task(name: str, args: dict[str, Any] | None = None) -> None:
    """Fail when ``name`` is not a task or ``args`` are not its arguments (nothing built)."""
    if args is not None and not isinstance(args, dict):
        raise TypeError(f"task arguments must be a mapping, got {type(args).__name__}")
    args = dict(args or {})
    accepted = task_arguments(name)
    unknown = sorted(set(args) - set(accepted))
    if unknown:
        listed = ", ".join(accepted) or "none"
        raise ValueError(
            f"task {name!r} has no argument(s) {', '.join(unknown)}; accepted: {listed}"
        )
    missing = sorted(
        k for k, v in accepted.items() if v is inspect.Parameter.empty and k not in args
    )
    if missing:
        raise ValueError(f"task {name!r} needs argument(s) {', '.join(missing)}")


def create_task(name: str = "classification", args: dict[str, Any] | None = None) -> Task:
    """Build a registered task; unknown or missing arguments fail with the accepted ones."""
    check_task(name, args)
    args = dict(args or {})
    try:
        task = _resolve(name)(**args)
    except TypeError as err:
        raise ValueError(f"task {name!r}: {err}") from None
    if not hasattr(task, "trainable"):
        raise TypeError(f"{type(task).__name__}.__init__ must call super().__init__()")
    task.args = args
    task.name = name
    if task.views < 1:
        raise ValueError(f"task {name!r} asks for {task.views} views; at least 1 is needed")
    return task
