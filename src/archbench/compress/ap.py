"""AP (Activate-while-Pruning): iterative magnitude pruning that also removes the negative
weights that barely moved, lowering the pruned network's dynamic dead neuron rate.

*AP: Selective Activation for De-sparsifying Pruned Neural Networks* (Liu, Ghosh, Tan and
Motani, TMLR 2023; official release Martin1937/Activate-While-Pruning). The dynamic dead
neuron rate (DNR) is the fraction of ReLU outputs that are zero over the data; the
paper finds that pruned networks do better with a lower DNR. AP is not a pruning
criterion of its own: in each pruning cycle the base method (here global magnitude
pruning, the official ``prune_by_percentile_lt``) removes ``prune_percent - ap_percent``
percent of the remaining weights, and AP removes another ``ap_percent`` (2 in the
official release): among the remaining *negative* weights, those whose value changed
least during the cycle's training (``|w - w_prev|``; ``prune_by_percentile_ap``).
Negative weights push ReLU inputs below zero, so removing the stagnant ones activates
neurons. The official code applies AP after the first cycles only (``ap_start``).

The task ``ap_prune`` runs the cycles inside one ``fit``: the first ``cycle_epochs`` epochs
train the dense network, then every ``cycle_epochs`` epochs start with a pruning step
(which retrains afterwards), and after every optimizer step the masks are re-applied; the dynamic DNR of the
validation images is logged each epoch (``dnr``). The ``ap`` compressor runs it on a model
and reports sparsity and DNR before and after. Deviation: the official release rewinds
the weights to their initial values after each cycle (lottery-ticket style); here they
continue from the current values (``rewind=False``), which is how AP is combined with
fine-tuning-based pruning methods in the paper; ``rewind=True`` restores the
lottery-ticket behaviour.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..train import ClassificationTask, register_task
from ._common import check_fraction, run_fit
from .registry import CompressContext, CompressResult, register_compressor

__all__ = ["APPruneTask", "ap_select", "dead_neuron_rate", "magnitude_select"]


def _weights(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [
        (f"{n}.weight", m.weight)
        for n, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.Conv1d)) and m.weight[0].numel() > 1
    ]


@torch.no_grad()
def dead_neuron_rate(model: nn.Module, images: torch.Tensor) -> float:
    """Fraction of ReLU outputs that are exactly zero on ``images`` (every ReLU module)."""
    zeros, total = [0], [0]

    def hook(m: nn.Module, i: Any, o: torch.Tensor) -> None:
        zeros[0] += int((o == 0).sum())
        total[0] += o.numel()

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.ReLU)]
    if not hooks:
        raise ValueError(f"{type(model).__name__} has no nn.ReLU; the dead neuron rate needs one")
    was = model.training
    model.eval()
    try:
        model(images)
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return zeros[0] / max(1, total[0])


def magnitude_select(
    weights: list[torch.Tensor], masks: list[torch.Tensor], percent: float
) -> list[torch.Tensor]:
    """New masks with ``percent`` % of the alive weights (smallest magnitudes, global) removed."""
    alive = torch.cat([w[m].abs().flatten() for w, m in zip(weights, masks, strict=True)])
    k = int(alive.numel() * percent / 100)
    if k <= 0:
        return [m.clone() for m in masks]
    thr = alive.sort().values[k - 1]
    return [m & (w.abs() > thr) for w, m in zip(weights, masks, strict=True)]


def ap_select(
    weights: list[torch.Tensor], previous: list[torch.Tensor], masks: list[torch.Tensor], count: int
) -> list[torch.Tensor]:
    """New masks without the ``count`` alive negative weights that moved least since
    ``previous`` (``|w - w_prev|``)."""
    moves = torch.cat(
        [(w - p).abs()[m & (w < 0)] for w, p, m in zip(weights, previous, masks, strict=True)]
    )
    count = min(int(count), moves.numel())
    if count <= 0:
        return [m.clone() for m in masks]
    thr = moves.sort().values[count - 1]
    return [
        m & ~((w < 0) & ((w - p).abs() <= thr))
        for w, p, m in zip(weights, previous, masks, strict=True)
    ]


@register_task("ap_prune")
class APPruneTask(ClassificationTask):
    """Iterative magnitude pruning with AP, one pruning cycle every ``cycle_epochs``."""

    name = "ap_prune"

    def __init__(
        self,
        prune_percent: float = 20.0,
        ap_percent: float = 2.0,
        cycle_epochs: int = 1,
        ap_start: int = 1,
        rewind: bool = False,
    ) -> None:
        super().__init__()
        if not 0 < prune_percent < 100:
            raise ValueError(f"prune_percent must be in (0, 100), got {prune_percent}")
        if not 0 <= ap_percent < prune_percent:
            raise ValueError(
                f"ap_percent must be in [0, prune_percent={prune_percent}), got {ap_percent}"
            )
        if int(cycle_epochs) < 1 or int(ap_start) < 0:
            raise ValueError("cycle_epochs must be >= 1 and ap_start >= 0")
        self.prune_percent, self.ap_percent = float(prune_percent), float(ap_percent)
        self.cycle_epochs, self.ap_start, self.rewind = int(cycle_epochs), int(ap_start), rewind
        self.args = {
            "prune_percent": self.prune_percent,
            "ap_percent": self.ap_percent,
            "cycle_epochs": self.cycle_epochs,
            "ap_start": self.ap_start,
            "rewind": bool(rewind),
        }
        self.masks: list[torch.Tensor] = []
        self.previous: list[torch.Tensor] = []
        self.initial: list[torch.Tensor] = []
        self.cycles = 0

    def setup(self, model: nn.Module, data: Any, recipe: Any) -> None:
        self._params = [p for _, p in _weights(model)]
        self.masks = [(p != 0) for p in self._params]
        self.previous = [p.detach().clone() for p in self._params]
        self.initial = [p.detach().clone() for p in self._params]
        self._val_images = None
        if data is not None and getattr(data, "val", None) is not None:
            imgs = data.val.images[:256].float() / 255.0
            mean = torch.tensor(data.mean).view(1, -1, 1, 1)
            std = torch.tensor(data.std).view(1, -1, 1, 1)
            self._val_images = (imgs - mean) / std

    def prune_cycle(self) -> None:
        """One cycle: magnitude pruning, then AP's removal of stagnant negative weights."""
        weights = [p.detach() for p in self._params]
        use_ap = self.cycles + 1 >= self.ap_start and self.ap_percent > 0
        base = self.prune_percent - (self.ap_percent if use_ap else 0.0)
        alive_before = int(sum(int(m.sum()) for m in self.masks))
        masks = magnitude_select(weights, self.masks, base)
        if use_ap:
            masks = ap_select(
                weights, self.previous, masks, int(alive_before * self.ap_percent / 100)
            )
        self.masks = masks
        with torch.no_grad():
            for p, m, w0 in zip(self._params, masks, self.initial, strict=True):
                if self.rewind:
                    p.copy_(w0)
                p.mul_(m.to(p.dtype))
        self.previous = [p.detach().clone() for p in self._params]
        self.cycles += 1

    def on_step_end(self, state: Any) -> None:
        with torch.no_grad():
            for p, m in zip(self._params, self.masks, strict=True):
                p.mul_(m.to(p.dtype))

    def on_epoch_start(self, state: Any) -> None:
        # the first cycle trains the dense network; each later one starts by pruning
        if state.epoch > 0 and state.epoch % self.cycle_epochs == 0:
            self.prune_cycle()

    def on_epoch_end(self, state: Any, record: dict) -> None:
        total = sum(m.numel() for m in self.masks)
        record["sparsity"] = 1 - sum(int(m.sum()) for m in self.masks) / total
        if self._val_images is not None:
            dev = self._params[0].device
            record["dnr"] = dead_neuron_rate(state.model, self._val_images.to(dev))

    def state_dict(self) -> dict[str, torch.Tensor]:
        sd = super().state_dict()
        for i, (m, p, w0) in enumerate(zip(self.masks, self.previous, self.initial, strict=True)):
            sd[f"mask.{i}"] = m.to(torch.uint8)
            sd[f"previous.{i}"] = p
            sd[f"initial.{i}"] = w0
        sd["cycles"] = torch.tensor(self.cycles)
        return sd

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        super().load_state_dict(sd)
        n = len(self.masks)
        self.masks = [sd[f"mask.{i}"].bool() for i in range(n)]
        self.previous = [sd[f"previous.{i}"] for i in range(n)]
        self.initial = [sd[f"initial.{i}"] for i in range(n)]
        self.cycles = int(sd["cycles"])


def _check_args(
    cycles: Any = 3,
    prune_percent: Any = 20.0,
    ap_percent: Any = 2.0,
    cycle_epochs: Any = 1,
    ap_start: Any = 1,
    **_: Any,
) -> None:
    if int(cycles) < 1:
        raise ValueError(f"cycles must be >= 1, got {cycles}")
    APPruneTask(prune_percent, ap_percent, cycle_epochs, ap_start)


@register_compressor("ap", check=_check_args)
def ap(
    model: nn.Module,
    ctx: CompressContext,
    cycles: int = 3,
    prune_percent: float = 20.0,
    ap_percent: float = 2.0,
    cycle_epochs: int = 1,
    ap_start: int = 1,
) -> CompressResult:
    """Iterative magnitude pruning with AP for ``cycles`` cycles of ``cycle_epochs`` epochs."""
    if int(cycles) < 1:
        raise ValueError(f"cycles must be >= 1, got {cycles}")
    check_fraction("prune_percent / 100", prune_percent / 100)
    task = APPruneTask(prune_percent, ap_percent, cycle_epochs, ap_start)
    images = next(iter(ctx.calibration_batches(1))).to(ctx.device)
    dnr_before = dead_neuron_rate(model, images)
    run_fit(model, ctx, task, task.args, "ap_prune", epochs=(int(cycles) + 1) * int(cycle_epochs))
    weights = _weights(model)
    zeros = sum(int((p == 0).sum()) for _, p in weights)
    info = {
        "sparsity": zeros / sum(p.numel() for _, p in weights),
        "dnr_before": dnr_before,
        "dnr_after": dead_neuron_rate(model, images),
        "cycles": int(cycles),
    }
    return CompressResult(model, needs_finetune=False, info=info)
