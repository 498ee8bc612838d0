"""Compression methods by name: ``@register_compressor`` and the lookups around it.

A compressor is a function ``fn(model, ctx, **args) -> CompressResult``. It receives a
trained model and a :class:`CompressContext` (data, calibration batches, recipe, input
shape, device, output folder, a log callable) and returns the compressed model with what
it knows about it. Its keyword arguments (with their defaults) are the method's arguments:
``archbench compress --method NAME --arg K=V`` validates them by name before anything runs.

Methods that train (pruning schedules, quantization-aware steps) are also ``Task``s
registered with ``archbench.train.register_task``; their compressor runs them through
``fit``.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

__all__ = [
    "CompressContext",
    "CompressResult",
    "check_compressor",
    "compressor_arguments",
    "create_compressor",
    "has_replay",
    "list_compressors",
    "register_compressor",
    "replay_compression",
]


@dataclass
class CompressContext:
    """What a compressor may use besides the model.

    ``data``: the loaded ``DataBundle`` (or None when the method needs no data);
    ``calibration``: a factory returning a fresh iterator of normalized image batches
    (N, C, H, W) from the training split (None without data); ``batches``: the same with
    labels, ``(images, labels)`` (for methods that need a loss); ``recipe``: the ``Recipe``
    for methods that fine-tune or train; ``input_shape``: (C, H, W) of one example;
    ``device``; ``out_dir`` (None when nothing is written); ``log``: a callable taking a
    line of text.
    """

    data: Any = None
    calibration: Callable[[], Iterator[torch.Tensor]] | None = None
    batches: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]] | None = None
    recipe: Any = None
    input_shape: tuple[int, int, int] = (3, 32, 32)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    out_dir: Path | None = None
    log: Callable[[str], None] = lambda line: None

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """A random input of the example shape, on the device (for tracing, not statistics)."""
        g = torch.Generator().manual_seed(0)
        return torch.randn((batch, *self.input_shape), generator=g).to(self.device)

    def check_calibration(self) -> None:
        """Fail when the calibration batches do not have the model's input shape."""
        if self.calibration is None:
            return
        first = next(iter(self.calibration()), None)
        if first is None:
            raise ValueError("the calibration data holds no batches; use a larger --data")
        if not isinstance(first, torch.Tensor) or first.ndim != 4:
            raise ValueError(
                "calibration batches must be (N, C, H, W) image tensors, got "
                f"{getattr(first, 'shape', type(first).__name__)}"
            )
        if tuple(first.shape[1:]) != tuple(self.input_shape):
            c, h, w = self.input_shape
            raise ValueError(
                f"calibration images are {'x'.join(map(str, first.shape[1:]))} (CxHxW) but the "
                f"model takes {c}x{h}x{w}; pass --data with {c} channels and img_size={h}"
            )

    def calibration_batches(self, max_batches: int | None = None) -> Iterable[torch.Tensor]:
        """Calibration batches (at most ``max_batches``); fails when there is no data."""
        if self.calibration is None:
            raise ValueError("this method needs calibration data; pass --data SPEC")
        for i, batch in enumerate(self.calibration()):
            if max_batches is not None and i >= max_batches:
                return
            yield batch


@dataclass
class CompressResult:
    """A compressed model and what the method knows about it.

    ``simulated``: True when quantization is fake (float arithmetic that mimics int8; no
    int8 kernel runs), so speed figures say nothing about a real int8 deployment.
    ``needs_finetune``: the method expects fine-tuning afterwards (``--finetune-epochs``).
    ``info``: method-specific facts (chosen ratios, per-layer widths, bits...), JSON-able.
    ``keep_zeros``: unstructured sparsity; fine-tuning must keep the pruned weights at zero
    (``archbench compress`` masks them with ``torch.nn.utils.prune`` while it trains).
    """

    model: nn.Module
    simulated: bool = False
    needs_finetune: bool = False
    keep_zeros: bool = False
    info: dict[str, Any] = field(default_factory=dict)


_COMPRESSORS: dict[str, Callable[..., CompressResult]] = {}
_CHECKS: dict[str, Callable[..., None]] = {}
_REPLAYS: dict[str, Callable[[nn.Module, dict[str, Any]], None]] = {}
_loaded = False


def register_compressor(
    name: str,
    check: Callable[..., None] | None = None,
    replay: Callable[[nn.Module, dict[str, Any]], None] | None = None,
):
    """Function decorator: make ``fn(model, ctx, **args)`` selectable as ``--method name``.

    ``check(**args)``, when given, validates the arguments' values (a ratio's range, a
    scheme's name) and raises ``ValueError`` saying what to change; it runs in
    :func:`check_compressor`, before any model is loaded or measured.

    ``replay(model, info)``, for a method that changes the model's modules (wraps blocks,
    adds parametrizations), gives a freshly built model the same modules from the
    result's ``info`` (no data, no training), so that a saved compressed model loads
    again (:func:`replay_compression`, called by ``archbench.runs.load_trained``)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a compressor name must be a non-empty string, got {name!r}")

    def deco(fn: Callable[..., CompressResult]) -> Callable[..., CompressResult]:
        if not callable(fn):
            raise TypeError(f"register_compressor({name!r}) expects a function, got {fn!r}")
        if name in _COMPRESSORS and _COMPRESSORS[name] is not fn:
            raise ValueError(f"a compressor named {name!r} is already registered")
        params = list(inspect.signature(fn).parameters)
        if len(params) < 2:
            raise TypeError(f"compressor {name!r} must take (model, ctx, **args)")
        fn.compressor_name = name  # type: ignore[attr-defined]
        _COMPRESSORS[name] = fn
        if check is not None:
            _CHECKS[name] = check
        if replay is not None:
            _REPLAYS[name] = replay
        return fn

    return deco


def _load() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        import archbench.compress  # noqa: F401  (imports every module, which registers)


def list_compressors() -> list[str]:
    """Names of the registered compression methods."""
    _load()
    return sorted(_COMPRESSORS)


def _resolve(name: str) -> Callable[..., CompressResult]:
    _load()
    if not isinstance(name, str) or name not in _COMPRESSORS:
        close = difflib.get_close_matches(str(name), list(_COMPRESSORS), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(
            f"unknown compression method {name!r}{hint}; registered: "
            f"{', '.join(sorted(_COMPRESSORS)) or 'none'}"
        )
    return _COMPRESSORS[name]


def has_replay(name: str) -> bool:
    """Whether ``name`` changes modules that :func:`replay_compression` rebuilds."""
    _resolve(name)
    return name in _REPLAYS


def replay_compression(model: nn.Module, method: str, info: dict[str, Any]) -> nn.Module:
    """Give a freshly built ``model`` the modules ``method`` made (from its result's
    ``info``), in place, so that the compressed weights load; returns ``model``."""
    _resolve(method)
    if method not in _REPLAYS:
        raise ValueError(f"compression method {method!r} records no module changes to replay")
    _REPLAYS[method](model, info)
    return model


def compressor_arguments(name: str) -> dict[str, Any]:
    """The arguments a method accepts, with defaults (``inspect.Parameter.empty`` if required)."""
    sig = inspect.signature(_resolve(name))
    return {
        p.name: p.default
        for p in list(sig.parameters.values())[2:]
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def check_compressor(name: str, args: dict[str, Any] | None = None) -> None:
    """Fail when ``name`` is not a method or ``args`` are not its arguments."""
    if args is not None and not isinstance(args, dict):
        raise TypeError(f"compressor arguments must be a mapping, got {type(args).__name__}")
    accepted = compressor_arguments(name)
    unknown = sorted(set(args or {}) - set(accepted))
    if unknown:
        raise ValueError(
            f"method {name!r} has no argument(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(accepted) or 'none'}"
        )
    missing = sorted(
        k for k, v in accepted.items() if v is inspect.Parameter.empty and k not in (args or {})
    )
    if missing:
        raise ValueError(f"method {name!r} needs argument(s) {', '.join(missing)}")
    if name in _CHECKS:
        defaults = {k: v for k, v in accepted.items() if v is not inspect.Parameter.empty}
        _CHECKS[name](**{**defaults, **(args or {})})


def create_compressor(name: str, args: dict[str, Any] | None = None):
    """A callable ``compress(model, ctx) -> CompressResult`` with ``args`` checked and bound."""
    check_compressor(name, args)
    fn = _resolve(name)
    bound = dict(args or {})

    def compress(model: nn.Module, ctx: CompressContext) -> CompressResult:
        result = fn(model, ctx, **bound)
        if not isinstance(result, CompressResult):
            raise TypeError(f"compressor {name!r} returned {type(result).__name__}, not a result")
        return result

    compress.name = name  # type: ignore[attr-defined]
    compress.args = bound  # type: ignore[attr-defined]
    return compress
