"""Structured (channel and attention-head) pruning on Torch-Pruning's dependency graph.

Torch-Pruning (Fang et al., *DepGraph: Towards Any Structural Pruning*, CVPR 2023) traces
the model, groups every layer whose channels must be removed together, scores each group
with an importance criterion and removes the weakest channels physically: the pruned
model has smaller tensors, fewer MACs and a smaller file. archbench does not re-implement
the tracing; this module adds what an archbench model needs around it:

- attention heads: every module with a ``num_heads`` attribute and a fused ``qkv`` linear
  has its heads registered with the pruner, which removes whole heads (head width kept, so
  the 1/sqrt(d) attention scale is unchanged) and ``num_heads`` is updated afterwards;
- the classifier head is never pruned (its outputs are the classes);
- ``num_features`` and ``feature_info`` widths are updated so the model keeps its contract
  (``forward_features``, ``forward_head(pre_logits=True)``, ``forward_intermediates``);
- the pruned structure is reproducible: :func:`structure_of` records every changed module
  attribute and every resized tensor, :func:`apply_structure` replays it on a freshly built
  model before its weights are loaded (``archbench.runs.load_trained`` does so when a run's
  ``model.json`` carries a ``structure`` entry);
- a layer the graph cannot handle is named, with the option to leave it out (``ignore``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import warnings
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import CompressContext, CompressResult, register_compressor

__all__ = [
    "IMPORTANCES",
    "PruneError",
    "apply_structure",
    "prune_structured",
    "snapshot",
    "structure_of",
]

IMPORTANCES = ("magnitude", "l1", "lamp", "fpgm", "taylor", "bn_scale", "random")


class PruneError(ValueError):
    """A layer the dependency graph cannot handle; ``layer`` names it."""

    def __init__(self, message: str, layer: str | None = None) -> None:
        super().__init__(message)
        self.layer = layer


# ----- structure: record and replay ----------------------------------------------------
_SIMPLE = (int, float, bool, str)


def _simple_attrs(module: nn.Module) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in vars(module).items():
        if key.startswith("_") or key == "training":
            continue
        if isinstance(value, _SIMPLE) or (
            isinstance(value, tuple | list)
            and len(value) <= 8
            and all(isinstance(v, _SIMPLE) for v in value)
        ):
            out[key] = value
    return out


def _snapshot(model: nn.Module) -> dict[str, Any]:
    return {
        "attrs": {name: _simple_attrs(m) for name, m in model.named_modules()},
        "shapes": {k: list(v.shape) for k, v in model.state_dict().items()},
    }


def snapshot(model: nn.Module) -> dict[str, Any]:
    """The attributes and tensor shapes of ``model``, the reference of :func:`structure_of`."""
    return _snapshot(model)


def structure_of(
    model: nn.Module, reference: dict[str, Any], original: nn.Module | None = None
) -> dict[str, Any]:
    """What differs between ``model`` and the :func:`_snapshot` ``reference`` of the model it
    was pruned from: changed module attributes, resized tensors, feature widths (JSON-able).
    With the ``original`` model, also the modules replaced by ``nn.Identity`` (removed
    layers, ``identity``)."""
    now = _snapshot(model)
    attrs: dict[str, dict[str, Any]] = {}
    for name, values in now["attrs"].items():
        before = reference["attrs"].get(name, {})
        changed = {k: v for k, v in values.items() if before.get(k, v) != v}
        if changed:
            attrs[name] = {k: list(v) if isinstance(v, tuple) else v for k, v in changed.items()}
    shapes = {k: s for k, s in now["shapes"].items() if reference["shapes"].get(k) != s}
    out: dict[str, Any] = {"attrs": attrs, "shapes": shapes}
    if original is not None:
        kept = dict(model.named_modules())
        removed = [
            name
            for name, m in original.named_modules()
            if name and isinstance(kept.get(name), nn.Identity) and not isinstance(m, nn.Identity)
        ]
        if removed:
            out["identity"] = removed
    info = getattr(model, "feature_info", None)
    if info:
        out["feature_chs"] = [int(f.num_chs) for f in info]
    return out


def apply_structure(model: nn.Module, structure: dict[str, Any]) -> nn.Module:
    """Give a freshly built ``model`` the pruned shapes of ``structure`` (in place); load the
    pruned weights afterwards. Tensors are resized uninitialised."""
    if not isinstance(structure, dict) or not {"attrs", "shapes"} <= set(structure):
        raise ValueError("a pruned structure needs 'attrs' and 'shapes' entries")
    for name in structure.get("identity", []):  # removed layers first
        parent, _, attr = name.rpartition(".")
        try:
            holder = model.get_submodule(parent) if parent else model
            getattr(holder, attr) if not attr.isdigit() else holder[int(attr)]
        except (AttributeError, IndexError, TypeError):
            raise ValueError(
                f"pruned structure removes module {name!r}, which this model lacks"
            ) from None
        if isinstance(holder, (nn.Sequential, nn.ModuleList)) and attr.isdigit():
            holder[int(attr)] = nn.Identity()
        else:
            setattr(holder, attr, nn.Identity())
    modules = dict(model.named_modules())
    for name, values in structure["attrs"].items():
        if name not in modules:
            raise ValueError(f"pruned structure names module {name!r}, which this model lacks")
        m = modules[name]
        for key, value in values.items():
            old = getattr(m, key, None)
            setattr(m, key, tuple(value) if isinstance(old, tuple) else value)
    for key, shape in structure["shapes"].items():
        path, _, leaf = key.rpartition(".")
        owner = modules.get(path)
        if owner is None or not hasattr(owner, leaf):
            raise ValueError(f"pruned structure names tensor {key!r}, which this model lacks")
        old = getattr(owner, leaf)
        new = torch.empty(shape, dtype=old.dtype, device=old.device)
        if isinstance(old, nn.Parameter):
            setattr(owner, leaf, nn.Parameter(new, requires_grad=old.requires_grad))
        else:
            owner._buffers[leaf] = new
    chs = structure.get("feature_chs")
    info = getattr(model, "feature_info", None)
    if chs and info and len(chs) == len(info):
        model.feature_info = [dataclasses.replace(f, num_chs=c) for f, c in zip(info, chs)]
    return model


# ----- the pruner ----------------------------------------------------------------------
def _importance(name: str):
    import torch_pruning as tp

    if name not in IMPORTANCES:
        raise ValueError(f"unknown importance {name!r}; choose one of {', '.join(IMPORTANCES)}")
    return {
        "magnitude": lambda: tp.importance.GroupMagnitudeImportance(p=2),
        "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
        "lamp": lambda: tp.importance.LAMPImportance(p=2),
        "fpgm": lambda: tp.importance.FPGMImportance(p=2),
        "taylor": lambda: tp.importance.GroupTaylorImportance(),
        "bn_scale": lambda: tp.importance.BNScaleImportance(),
        "random": lambda: tp.importance.RandomImportance(),
    }[name]()


def _classifier_layers(model: nn.Module) -> list[nn.Module]:
    """Layers whose outputs are classes (never pruned)."""
    n = getattr(model, "num_classes", None)
    out = []
    for m in model.modules():
        if isinstance(m, nn.Linear) and m.out_features == n:
            out.append(m)
        elif isinstance(m, nn.Conv2d) and m.out_channels == n and m.kernel_size == (1, 1):
            out.append(m)
    return out


def _attention_heads(model: nn.Module) -> dict[nn.Module, tuple[nn.Module, int]]:
    """{qkv linear: (attention module, head width)} for fused-qkv multi-head attention."""
    found = {}
    for m in model.modules():
        heads, qkv = getattr(m, "num_heads", None), getattr(m, "qkv", None)
        if isinstance(heads, int) and isinstance(qkv, nn.Linear) and heads > 0:
            if qkv.out_features % (3 * heads) == 0:
                found[qkv] = (m, qkv.out_features // (3 * heads))
    return found


def _split_qkv_by_unbind(self: nn.Module, x: torch.Tensor):
    """``Attention.qkv_heads`` with ``unbind``, which Torch-Pruning traces (it does not trace
    the indexing ``qkv[0]``); numerically identical."""
    b, n, _ = x.shape
    qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
    return qkv.unbind(0)


def _apply_tracing_fixes(model: nn.Module) -> list[str]:
    """Swap, for tracing only, code Torch-Pruning cannot follow for an equivalent it can.
    Returns the module paths fixed (undone by :func:`_undo_tracing_fixes`)."""
    from archbench.layers.attention import Attention

    fixed = []
    for name, m in model.named_modules():
        if isinstance(m, Attention) and type(m).qkv_heads is Attention.qkv_heads:
            m.qkv_heads = types.MethodType(_split_qkv_by_unbind, m)
            fixed.append(name)
    return fixed


def _undo_tracing_fixes(model: nn.Module, fixed: list[str]) -> None:
    for name in fixed:
        vars(model.get_submodule(name)).pop("qkv_heads", None)


def _parse_ignore(model: nn.Module, ignore: str | list[str] | None) -> list[str]:
    if ignore is None or ignore == "":
        return []
    names = ignore.split(",") if isinstance(ignore, str) else list(ignore)
    names = [n.strip() for n in names if n.strip()]
    modules = dict(model.named_modules())
    unknown = [n for n in names if n not in modules]
    if unknown:
        raise ValueError(
            f"ignore names module(s) {', '.join(unknown)} that the model lacks; give module "
            "paths as in model.named_modules(), comma-separated"
        )
    return names


def _check_ratio(ratio: Any, name: str = "ratio") -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not math.isfinite(ratio):
        raise ValueError(f"{name} must be a number in (0, 1), got {ratio!r}")
    if not 0.0 < ratio < 1.0:
        raise ValueError(
            f"{name} must lie in (0, 1) (the fraction of channels removed), got {ratio}; "
            "e.g. 0.3 removes 30% of the channels"
        )
    return float(ratio)


def _failing_module(model: nn.Module, x: torch.Tensor) -> tuple[str | None, Exception | None]:
    """Run ``model(x)``; on failure, the innermost module that started and did not finish."""
    stack: list[str] = []
    failed: list[str] = []
    handles = []
    for name, m in model.named_modules():
        if not name:
            continue

        def pre(_m, _i, name=name):
            stack.append(name)

        def post(_m, _i, _o, name=name):
            if stack and stack[-1] == name:
                stack.pop()

        handles.append(m.register_forward_pre_hook(pre))
        handles.append(m.register_forward_hook(post))
    try:
        with torch.no_grad():
            model(x)
        return None, None
    except Exception as err:  # noqa: BLE001  (any failure is reported with the layer)
        failed = list(stack)
        return (failed[-1] if failed else None), err
    finally:
        for h in handles:
            h.remove()


def _owner_of(model: nn.Module, layer: str | None) -> str | None:
    """The outermost module path under ``layer`` worth ignoring: the attention/mixer block."""
    if layer is None:
        return None
    parts = layer.split(".")
    # go up from a leaf (a Linear inside an attention) to its parent module
    modules = dict(model.named_modules())
    m = modules.get(layer)
    if m is not None and not list(m.children()) and len(parts) > 1:
        return ".".join(parts[:-1])
    return layer


def prune_structured(
    model: nn.Module,
    example: torch.Tensor,
    ratio: float,
    importance: str = "magnitude",
    heads: bool = True,
    global_pruning: bool = False,
    ignore: str | list[str] | None = None,
    round_to: int | None = None,
    loss_batches: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    layer_ratios: dict[str, float] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """A pruned copy of ``model`` (``ratio`` of the channels of each prunable group removed)
    and what was done. ``ratio == 0`` returns an unchanged copy. Fails with
    :class:`PruneError` naming a layer the graph cannot handle (pass it in ``ignore``)."""
    import torch_pruning as tp

    if ratio != 0:
        ratio = _check_ratio(ratio)
    imp = _importance(importance)
    if importance == "taylor" and not loss_batches:
        raise ValueError("importance='taylor' needs labelled data for gradients; pass --data")
    ignored_names = _parse_ignore(model, ignore)
    pruned = copy.deepcopy(model).eval()
    reference = _snapshot(pruned)
    if ratio == 0 and not layer_ratios:
        return pruned, {"ratio": 0.0, "structure": {"attrs": {}, "shapes": {}}, "heads": {}}
    modules = dict(pruned.named_modules())
    ignored = list(_classifier_layers(pruned))
    for name in ignored_names:
        ignored.extend(modules[name].modules())
    attn = {q: v for q, v in _attention_heads(pruned).items() if q not in ignored}
    if not heads:  # keep every head whole: leave the fused qkv projections out
        ignored.extend(attn)
        attn = {}
    fixed = _apply_tracing_fixes(pruned)
    kwargs: dict[str, Any] = dict(
        importance=imp,
        pruning_ratio=ratio,
        global_pruning=global_pruning,
        ignored_layers=ignored,
        round_to=round_to,
    )
    if layer_ratios:  # per-layer ratios (module path -> ratio) override ``ratio`` there
        kwargs["pruning_ratio_dict"] = {modules[n]: float(r) for n, r in layer_ratios.items()}
    if attn:
        kwargs.update(
            num_heads={q: m.num_heads for q, (m, _) in attn.items()},
            prune_num_heads=True,
            prune_head_dims=False,
            head_pruning_ratio=ratio,
        )
    names = {m: n for n, m in pruned.named_modules()}
    current: list[str] = []

    def tracked(group, **kw):  # remembers which group is being scored, to name it on failure
        current[:] = [names.get(group[0].dep.target.module, "?")]
        return imp(group, **kw)

    kwargs["importance"] = tracked
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pruner = tp.pruner.BasePruner(pruned, example, **kwargs)
            if importance == "taylor":
                pruned.zero_grad()
                for images, labels in loss_batches or []:
                    F.cross_entropy(pruned(images), labels).backward()
            pruner.step()
    except Exception as err:  # noqa: BLE001  (tracing failures of any kind are reported)
        layer = _owner_of(pruned, current[0]) if current else None
        where = f"the channel group of layer {layer!r}" if layer else "this model"
        raise PruneError(
            f"the dependency graph cannot prune {where} ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:160] if str(err) else ''}); pass ignore="
            f"{layer or '<module path>'} (comma-separated module paths) to leave it unpruned",
            layer,
        ) from None
    finally:
        _undo_tracing_fixes(pruned, fixed)
    pruned.zero_grad(set_to_none=True)
    head_counts = {}
    for q, (m, width) in attn.items():
        m.num_heads = q.out_features // (3 * width)
        m.head_dim = width
        head_counts[_path_of(pruned, m)] = m.num_heads
    layer, err = _failing_module(pruned, example)
    if err is not None:
        owner = _owner_of(pruned, layer)
        what = (
            f"layer {owner!r} ({type(modules[owner]).__name__})"
            if owner in modules
            else ("a top-level operation of the model's forward")
        )
        raise PruneError(
            f"{what} "
            f"cannot be pruned by the dependency graph ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:160]}); pass ignore={owner or '<module path>'} "
            "(comma-separated module paths) to leave it unpruned",
            owner,
        )
    _update_widths(pruned, example)
    structure = structure_of(pruned, reference)
    return pruned, {
        "ratio": ratio,
        "importance": importance,
        "global_pruning": global_pruning,
        "ignored": ignored_names,
        "heads": head_counts,
        "tracing_fixes": fixed,
        "structure": structure,
    }


def _path_of(model: nn.Module, target: nn.Module) -> str:
    for name, m in model.named_modules():
        if m is target:
            return name
    return "?"


def _update_widths(model: nn.Module, example: torch.Tensor) -> None:
    """Refresh ``num_features`` and ``feature_info`` widths from the pruned model's outputs."""
    with torch.no_grad():
        if hasattr(model, "forward_head") and hasattr(model, "num_features"):
            feats = model.forward_features(example)
            model.num_features = int(model.forward_head(feats, pre_logits=True).shape[-1])
        info = getattr(model, "feature_info", None)
        if info and hasattr(model, "forward_intermediates"):
            outs = model.forward_intermediates(example)
            model.feature_info = [
                dataclasses.replace(f, num_chs=int(o.shape[1] if o.ndim == 4 else o.shape[-1]))
                for f, o in zip(info, outs)
            ]


def _check_args(ratio: Any = 0.3, importance: str = "magnitude", **_: Any) -> None:
    _check_ratio(ratio)
    if importance not in IMPORTANCES:
        raise ValueError(
            f"unknown importance {importance!r}; choose one of {', '.join(IMPORTANCES)}"
        )


@register_compressor("structured", check=_check_args)
def structured(
    model: nn.Module,
    ctx: CompressContext,
    ratio: float = 0.3,
    importance: str = "magnitude",
    heads: bool = True,
    global_pruning: bool = False,
    ignore: str = "",
    round_to: int = 0,
    calib_batches: int = 4,
) -> CompressResult:
    """Structured pruning with Torch-Pruning: ``ratio`` of channels (and attention heads)
    removed by ``importance`` (magnitude, l1, lamp, fpgm, taylor, bn_scale, random).
    Fine-tune afterwards (``--finetune-epochs``) to recover accuracy."""
    _check_ratio(ratio)
    loss_batches = None
    if importance == "taylor":
        if ctx.batches is None:
            raise ValueError("importance='taylor' needs labelled data for gradients; pass --data")
        loss_batches = [
            (x.to(ctx.device), y.to(ctx.device))
            for _, (x, y) in zip(range(max(1, calib_batches)), ctx.batches())
        ]
    pruned, info = prune_structured(
        model,
        ctx.example_input(1),
        ratio,
        importance=importance,
        heads=heads,
        global_pruning=global_pruning,
        ignore=ignore,
        round_to=round_to or None,
        loss_batches=loss_batches,
    )
    return CompressResult(model=pruned, simulated=False, needs_finetune=True, info=info)


def survey_model(name: str, ratio: float = 0.25, max_ignored: int = 3) -> dict[str, Any]:
    """How one registered model prunes with no manual fix: the outcome, the layers that had
    to be ignored (each named by the failure), the tracing fixes applied, and whether the
    pruned model is smaller, keeps its output shapes and rebuilds from its structure."""
    from archbench.models import create_model

    model = create_model(name, num_classes=10).eval()
    shape = _model_input_shape(model)
    torch.manual_seed(0)
    x = torch.randn(1, *shape)
    ignored: list[str] = []
    record: dict[str, Any] = {"model": name, "ratio": ratio, "input": list(shape)}
    while True:
        try:
            pruned, info = prune_structured(model, x, ratio, ignore=ignored)
            break
        except PruneError as err:
            if err.layer is None or err.layer in ignored or len(ignored) >= max_ignored:
                record.update(status="fails", error=str(err)[:300], ignored=ignored)
                return record
            ignored.append(err.layer)
        except Exception as err:  # noqa: BLE001  (recorded, not raised: this is a survey)
            record.update(status="fails", error=f"{type(err).__name__}: {err}"[:300])
            return record
    before = sum(p.numel() for p in model.parameters())
    after = sum(p.numel() for p in pruned.parameters())
    with torch.no_grad():
        same_shapes = pruned(x).shape == model(x).shape and [
            o.shape[0] for o in pruned.forward_intermediates(x)
        ] == [o.shape[0] for o in model.forward_intermediates(x)]
        rebuilt = apply_structure(create_model(name, num_classes=10), info["structure"]).eval()
        rebuilt.load_state_dict(pruned.state_dict())
        reloads = bool(torch.equal(rebuilt(x), pruned(x)))
    if after >= before:
        status = "unchanged"
    elif ignored:
        status = "ignore"
    elif info["tracing_fixes"]:
        status = "fixed"
    else:
        status = "ok"
    record.update(
        status=status,
        ignored=ignored,
        tracing_fixes=len(info["tracing_fixes"]),
        heads_pruned=bool(info["heads"]),
        params_before=before,
        params_after=after,
        same_shapes=bool(same_shapes),
        reloads=reloads,
    )
    return record


def _model_input_shape(model: nn.Module) -> tuple[int, int, int]:
    card = getattr(model, "model_card", None)
    side = card.img_size if card is not None and card.img_size else 32
    fixed = getattr(model, "fixed_input_size", None)
    h, w = tuple(fixed) if fixed else (side, side)
    return (getattr(model, "in_chans", 3), int(h), int(w))
