"""Callbacks: how techniques observe and adjust a run of :func:`archbench.train.fit`.

A callback is any object with some of these methods (all optional), called in this
order (see :mod:`archbench.train.engine` for the whole loop)::

    on_fit_start(state)                       before the optimizer is built
    on_epoch_start(state)
    on_train_batch_start(state, batch)        the augmented Batch, before the step
    on_before_backward(state, loss)
    on_after_backward(state)                  gradients exist, not yet clipped
    on_before_optimizer_step(state)           gradients clipped
    on_step_end(state)                        after optimizer.step()
    on_epoch_end(state, record)               after validation; may add keys to record
    on_fit_end(state, result)                 may add to result.extras
    state_dict() -> dict[str, Tensor]   load_state_dict(dict)   # saved in checkpoints

``state`` is the :class:`TrainState` of the run. What a step computes belongs to the
run's task (:mod:`archbench.train.tasks`), not to a callback.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

__all__ = ["EMA", "Callback", "TrainState"]


@dataclass
class TrainState:
    """What tasks and callbacks see: the live objects of a run and its counters."""

    model: nn.Module
    optimizer: torch.optim.Optimizer | None  # None until on_fit_start has run
    recipe: Any
    data: Any
    out_dir: Any
    epoch: int = 0  # 0-based epoch being trained
    step: int = 0  # global optimizer step (0-based count of steps done)
    step_in_epoch: int = 0
    steps_per_epoch: int = 0
    lr: float = 0.0
    loss: float = float("nan")  # loss of the last step
    stop: bool = False  # a callback may set this to end the run after the current step
    extras: dict[str, Any] = field(default_factory=dict)
    task: Any = None
    outputs: dict[str, Any] = field(default_factory=dict)  # the last step's outputs
    # validate(model) -> the task's validation metrics of any model (EMA weights ...)
    validate: Callable[[nn.Module], dict[str, float]] | None = None


class Callback:
    """Base class with every hook as a no-op (subclassing it is optional)."""

    name = "callback"

    def on_fit_start(self, state: TrainState) -> None: ...
    def on_epoch_start(self, state: TrainState) -> None: ...
    def on_train_batch_start(self, state: TrainState, batch: Any) -> None: ...
    def on_before_backward(self, state: TrainState, loss: torch.Tensor) -> None: ...
    def on_after_backward(self, state: TrainState) -> None: ...
    def on_before_optimizer_step(self, state: TrainState) -> None: ...
    def on_step_end(self, state: TrainState) -> None: ...
    def on_epoch_end(self, state: TrainState, record: dict[str, Any]) -> None: ...
    def on_fit_end(self, state: TrainState, result: Any) -> None: ...


class EMA(Callback):
    """Exponential moving average of the weights (Polyak averaging), updated each step.

    Buffers (BatchNorm statistics) are copied, not averaged. At each epoch end the EMA
    model is evaluated on the validation split (``val_ema_top1`` in the metrics).
    ``warmup`` ramps the decay as ``min(decay, (1 + t) / (10 + t))`` so early averages
    are not dominated by the random initialisation.
    """

    name = "ema"

    def __init__(self, decay: float = 0.999, warmup: bool = True, evaluate: bool = True) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.evaluate = evaluate
        self.model: nn.Module | None = None
        self.updates = 0

    def on_fit_start(self, state: TrainState) -> None:
        if self.model is None:
            self.model = copy.deepcopy(state.model).eval()
            for p in self.model.parameters():
                p.requires_grad_(False)

    @torch.no_grad()
    def on_step_end(self, state: TrainState) -> None:
        assert self.model is not None
        self.updates += 1
        t = self.updates
        d = min(self.decay, (1 + t) / (10 + t)) if self.warmup else self.decay
        ema_params = [p for p in self.model.parameters()]
        live = [p.detach() for p in state.model.parameters()]
        torch._foreach_lerp_(ema_params, live, 1.0 - d)
        for eb, b in zip(self.model.buffers(), state.model.buffers()):
            eb.copy_(b)

    def on_epoch_end(self, state: TrainState, record: dict[str, Any]) -> None:
        if not self.evaluate or self.model is None:
            return
        if state.validate is not None:  # the run's task judges the averaged weights
            m = state.validate(self.model)
        else:
            from .evaluate import evaluate

            m = evaluate(
                self.model,
                state.data.val,
                batch_size=state.recipe.eval_batch_size,
                precision=state.recipe.precision,
            )
        for k, v in m.items():
            if k != "n":
                record[f"val_ema_{k}"] = v

    def state_dict(self) -> dict[str, torch.Tensor]:
        assert self.model is not None
        sd = {f"w.{k}": v for k, v in self.model.state_dict().items()}
        sd["updates"] = torch.tensor(self.updates, dtype=torch.int64)
        return sd

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        assert self.model is not None
        self.model.load_state_dict({k[2:]: v for k, v in sd.items() if k.startswith("w.")})
        self.updates = int(sd["updates"])
