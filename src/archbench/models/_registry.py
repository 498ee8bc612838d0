"""The model registry: every architecture variant is a registered builder with a card.

``create_model(name, **kwargs)`` is the one way in. Builders are plain functions that
take keyword arguments only; ``build_model`` validates those arguments against the
model class so that a misspelt option fails instead of being ignored.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch.nn as nn

__all__ = [
    "ModelCard",
    "UnknownModelError",
    "build_model",
    "create_model",
    "get_model_card",
    "list_families",
    "list_models",
    "register_model",
]

KINDS = ("cnn", "vit", "hybrid", "mlp", "metaformer", "ssm", "kan")
SCALES = ("canonical", "cpu", "other")


@dataclass(frozen=True)
class ModelCard:
    """What a registered variant is and what its paper reports for it.

    ``params_m``, ``gmacs`` and ``top1`` are the paper's (or its official release's)
    figures at 1000 classes and ``img_size``. A ``canonical`` card promises that our
    parameter count lies within 0.5% of ``params_m``; ``cpu`` cards are the small
    variants sized for 32x32 inputs that train in minutes on two cores.
    """

    family: str
    paper: str
    year: int
    kind: str
    scale: str = "canonical"
    params_m: float | None = None
    gmacs: float | None = None
    top1: float | None = None
    img_size: int = 224
    source: str = ""
    variant: str = ""
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"ModelCard.kind must be one of {KINDS}, got {self.kind!r}")
        if self.scale not in SCALES:
            raise ValueError(f"ModelCard.scale must be one of {SCALES}, got {self.scale!r}")
        if self.scale == "canonical" and self.params_m is None:
            raise ValueError("a canonical ModelCard needs the paper's params_m")

    @property
    def canonical(self) -> bool:
        return self.scale == "canonical"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.variant,
            "family": self.family,
            "kind": self.kind,
            "scale": self.scale,
            "paper": self.paper,
            "year": self.year,
            "params_m": self.params_m,
            "gmacs": self.gmacs,
            "top1": self.top1,
            "img_size": self.img_size,
            "source": self.source,
            "notes": self.notes,
        }


class UnknownModelError(ValueError):
    """Raised by ``create_model`` for a name that is not registered."""


_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_CARDS: dict[str, ModelCard] = {}


def register_model(
    card: ModelCard,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a builder under its function name, with ``card`` describing the variant."""

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = fn.__name__
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} is registered twice")
        _BUILDERS[name] = fn
        _CARDS[name] = replace(card, variant=name)
        fn.model_card = _CARDS[name]  # type: ignore[attr-defined]
        return fn

    return decorator


def _ensure_loaded() -> None:
    # Importing the package registers every family module.
    import archbench.models  # noqa: F401


def list_models(
    pattern: str | None = None,
    family: str | None = None,
    kind: str | None = None,
    scale: str | None = None,
) -> list[str]:
    """Sorted names of registered models, filtered by a glob ``pattern`` and card fields."""
    _ensure_loaded()
    names = sorted(_BUILDERS)
    if pattern:
        names = [
            n for n in names if fnmatch.fnmatch(n, pattern) or fnmatch.fnmatch(n, f"*{pattern}*")
        ]
    cards = [_CARDS[n] for n in names]
    return [
        c.variant
        for c in cards
        if (family is None or c.family == family)
        and (kind is None or c.kind == kind)
        and (scale is None or c.scale == scale)
    ]


def list_families() -> list[str]:
    _ensure_loaded()
    return sorted({c.family for c in _CARDS.values()})


def _unknown(name: str) -> UnknownModelError:
    close = difflib.get_close_matches(name, list(_BUILDERS), n=5, cutoff=0.5)
    hint = f"; closest registered names: {', '.join(close)}" if close else ""
    return UnknownModelError(
        f"unknown model {name!r}{hint}. Run `archbench models` to list all {len(_BUILDERS)} models."
    )


def get_model_card(name: str) -> ModelCard:
    _ensure_loaded()
    if name not in _CARDS:
        raise _unknown(name)
    return _CARDS[name]


def create_model(name: str, pretrained: str | None = None, **kwargs: Any) -> nn.Module:
    """Build the registered variant ``name``; ``kwargs`` override its defaults.

    Every builder accepts ``num_classes``, ``in_chans``, ``img_size``, ``drop_rate`` and
    ``drop_path_rate``; an argument the model does not know raises ``TypeError`` naming it.
    ``pretrained`` (a ``.safetensors`` path, archbench's or timm's names, or
    ``"hf-hub:ORG/NAME"``) loads weights into the built model (``models.pretrained``).
    """
    _ensure_loaded()
    if not isinstance(name, str):
        raise TypeError(f"model name must be a string, got {type(name).__name__}")
    if name not in _BUILDERS:
        raise _unknown(name)
    model = _BUILDERS[name](**kwargs)
    model.model_card = _CARDS[name]
    if pretrained is not None:
        from .pretrained import load_pretrained

        model.pretrained_info = load_pretrained(model, pretrained)
    return model


def build_model(
    cls: type[nn.Module], defaults: dict[str, Any], kwargs: dict[str, Any]
) -> nn.Module:
    """Instantiate ``cls`` with a variant's ``defaults`` overridden by user ``kwargs``.

    Unknown keyword arguments are an error that lists the accepted ones.
    """
    params = inspect.signature(cls.__init__).parameters
    accepted = [
        p for p in params if p != "self" and params[p].kind is not inspect.Parameter.VAR_KEYWORD
    ]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        raise TypeError(
            f"{cls.__name__}.__init__ must not take **kwargs; list its options explicitly"
        )
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise TypeError(
            f"{cls.__name__} got unknown argument(s) {', '.join(map(repr, unknown))}; "
            f"accepted: {', '.join(sorted(accepted))}"
        )
    bad_defaults = sorted(set(defaults) - set(accepted))
    if bad_defaults:  # a mistake in a builder table, not in user input
        raise TypeError(f"variant defaults name unknown {cls.__name__} argument(s) {bad_defaults}")
    args = {**defaults, **kwargs}
    model = cls(**args)
    # Every constructor argument, the class defaults the variant left alone included, so
    # that a model can be rebuilt or rescaled (matched budgets read its width_args here).
    full = {
        p: params[p].default for p in accepted if params[p].default is not inspect.Parameter.empty
    }
    full.update(args)
    model.build_args = full
    return model
