"""DRESS: nested row-sparse subnets in one set of weights, chosen at run time.

*DRESS: Dynamic REal-time Sparse Subnets* (Xu et al., CVPR 2022 workshops). One backbone
holds several sub-networks. Each is a row-based unstructured sparsity pattern: in every
row of every convolution and linear weight (one output channel's weights) the largest-
magnitude ``1 - s`` fraction is kept. Because every level ranks a row the same way, a
sparser level keeps a subset of a denser one (the parameters are reused and the masks
nest, which is what makes switching on a device cheap), and the row-wise budget makes the
work per output channel uniform. Training samples every level from the current dense
weights at each step and minimizes a weighted sum of their losses,
``sum_i w_i CE(subnet_i(x), y) / sum_i w_i`` (task ``dress``; the dense network is level
0 unless ``include_dense`` is false). At run time, :func:`set_dress_level` picks a level.

The masks are a ``torch.nn.utils.parametrize`` parametrization (:class:`RowSparsity`) of
each weight, so gradients reach the kept weights of every active level; a weight pruned by
every level still trains through the dense subnet. Deviation: the paper's staged schedule
(dense pre-training, then the subnets) is left to the recipe; the default loss weights
are equal.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.utils.parametrize as parametrize

from ..train import Task, register_task, soft_cross_entropy
from ..train.tasks import classification_metrics
from ._common import check_fraction, run_fit
from .registry import CompressContext, CompressResult, register_compressor

__all__ = [
    "DressTask",
    "RowSparsity",
    "add_dress_masks",
    "dress_levels",
    "row_keep_mask",
    "set_dress_level",
]


def row_keep_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Per output row, keep the ``ceil((1 - sparsity) * row)`` largest magnitudes (stable)."""
    rows = weight.detach().reshape(weight.shape[0], -1)
    n = rows.shape[1]
    keep = max(1, n - int(sparsity * n))
    order = rows.abs().argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(n, device=rows.device).expand_as(order))
    return (rank < keep).reshape(weight.shape)


class RowSparsity(nn.Module):
    """Parametrization: the weight with the active level's row mask applied (or dense)."""

    def __init__(self, levels: Sequence[float]) -> None:
        super().__init__()
        self.levels = [float(s) for s in levels]
        self.active: float | None = None
        self._masks: dict[float, tuple[tuple[int, int], torch.Tensor]] = {}

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return weight
        # one mask per level, recomputed only when the weight changed (its version counter
        # moves with every in-place update), so run-time switching costs no sorting
        key = (weight._version, weight.data_ptr())
        cached = self._masks.get(self.active)
        if cached is None or cached[0] != key:
            cached = (key, row_keep_mask(weight, self.active).to(weight.dtype))
            self._masks[self.active] = cached
        return weight * cached[1]


def _layers(model: nn.Module) -> list[nn.Module]:
    return [
        m
        for m in model.modules()
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)) and m.weight[0].numel() > 1
    ]


def add_dress_masks(model: nn.Module, levels: Sequence[float]) -> nn.Module:
    """Parametrize every conv/linear weight of ``model`` with :class:`RowSparsity`."""
    levels = sorted({check_fraction("sparsity level", s, low_open=False) for s in levels})
    for m in _layers(model):
        if not parametrize.is_parametrized(m, "weight"):
            parametrize.register_parametrization(m, "weight", RowSparsity(levels))
    model.dress_levels = levels
    return model


def dress_levels(model: nn.Module) -> list[float]:
    levels = getattr(model, "dress_levels", None)
    if levels is None:
        raise ValueError("the model has no DRESS masks; add them with add_dress_masks")
    return list(levels)


def set_dress_level(model: nn.Module, sparsity: float) -> nn.Module:
    """Run ``model`` as its subnet of ``sparsity`` (one of its levels; 0 is the dense net)."""
    levels = dress_levels(model)
    if float(sparsity) not in levels:
        raise ValueError(
            f"sparsity {sparsity} is not a DRESS level of this model; levels: {levels}"
        )
    for m in model.modules():
        if isinstance(m, RowSparsity):
            m.active = float(sparsity) or None
    model.dress_active = float(sparsity)
    return model


@register_task("dress")
class DressTask(Task):
    """DRESS joint training: the weighted sum of every subnet's loss on each batch."""

    name = "dress"
    monitor = ("val_top1", "max")

    def __init__(
        self,
        sparsities: Sequence[float] = (0.5, 0.75, 0.9),
        loss_weights: Sequence[float] = (),
        include_dense: bool = True,
    ) -> None:
        super().__init__()
        levels = [check_fraction("sparsity", s) for s in sparsities]
        if not levels or len(set(levels)) != len(levels):
            raise ValueError(f"sparsities must be distinct values in (0, 1), got {sparsities}")
        self.levels = ([0.0] if include_dense else []) + sorted(levels)
        weights = [float(w) for w in loss_weights] or [1.0] * len(self.levels)
        if len(weights) != len(self.levels) or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(
                f"loss_weights needs {len(self.levels)} non-negative values (one per level "
                f"{self.levels}), got {list(loss_weights)}"
            )
        self.weights = weights
        self.args = {
            "sparsities": sorted(levels),
            "loss_weights": list(loss_weights),
            "include_dense": bool(include_dense),
        }

    def setup(self, model: nn.Module, data: Any, recipe: Any) -> None:
        add_dress_masks(model, self.levels)

    def step(self, batch: Any, state: Any) -> dict[str, Any]:
        model = state.model
        total = 0.0
        out: dict[str, Any] = {}
        for s, w in zip(self.levels, self.weights, strict=True):
            set_dress_level(model, s)
            logits = model(batch.images)
            loss = soft_cross_entropy(logits, batch.targets)
            total = total + w * loss
            out[f"ce_s{round(s * 100)}"] = loss.detach()
        set_dress_level(model, self.levels[0])
        out["loss"] = total / sum(self.weights)
        return out

    def eval_step(self, batch: Any, state: Any) -> dict[str, float]:
        model = state.model
        out: dict[str, float] = {}
        tops = []
        for s in self.levels:
            set_dress_level(model, s)
            m = classification_metrics(model(batch.images), batch.labels)
            out[f"top1_s{round(s * 100)}"] = m["top1"] / m["n"]
            tops.append(m["top1"] / m["n"])
        set_dress_level(model, self.levels[0])
        out["top1"] = sum(tops) / len(tops)  # every subnet counts for the best checkpoint
        return out


def _parse_levels(sparsities: Any) -> list[float]:
    try:
        return [float(t) for t in str(sparsities).replace(" ", "").split(",") if t]
    except ValueError:
        raise ValueError(
            f"sparsities must be comma-separated numbers such as '0.5,0.75,0.9', got {sparsities!r}"
        ) from None


def _check_args(sparsities: Any = "0.5,0.75,0.9", select: Any = -1.0, **_: Any) -> None:
    task = DressTask(_parse_levels(sparsities))
    if float(select) != -1.0 and float(select) not in task.levels:
        raise ValueError(f"select must be one of the levels {task.levels}, got {select}")


def _replay(model: nn.Module, info: dict[str, Any]) -> None:
    add_dress_masks(model, info["levels"])
    set_dress_level(model, info["selected"])


@register_compressor("dress", check=_check_args, replay=_replay)
def dress(
    model: nn.Module,
    ctx: CompressContext,
    sparsities: str = "0.5,0.75,0.9",
    select: float = -1.0,
    epochs: int = 0,
) -> CompressResult:
    """Train DRESS subnets (``epochs``; 0 = the recipe's) and run the ``select`` level
    (default: the sparsest). ``set_dress_level`` switches later."""
    levels = _parse_levels(sparsities)
    task = DressTask(levels)
    if select != -1.0 and float(select) not in task.levels:
        raise ValueError(f"select must be one of the levels {task.levels}, got {select}")
    if ctx.data is None:
        raise ValueError("DRESS trains its subnets; pass --data SPEC")
    run_fit(model, ctx, task, task.args, "dress", epochs=epochs or None)
    from ..train import evaluate

    acc = {}
    for s in task.levels:
        set_dress_level(model, s)
        acc[str(s)] = evaluate(model, ctx.data, split="val")["top1"]
    chosen = task.levels[-1] if select == -1.0 else float(select)
    set_dress_level(model, chosen)
    info = {"levels": task.levels, "selected": chosen, "val_top1_by_level": acc}
    return CompressResult(model, info=info)
