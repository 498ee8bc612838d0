"""MEAL V2: *MEAL V2: Boosting Vanilla ResNet-50 to 80%+ Top-1 Accuracy on ImageNet without
Tricks* (Shen and Savvides, 2020; official code szq0214/MEAL-V2).

The student learns only from an ensemble of teachers, never from the labels. With
``K`` teachers' logits ``z_t^k`` and the student's ``z_s``::

    p_ens  = (1/K) * sum_k softmax(z_t^k)                          # averaged soft labels
    L_kd   = -(1/B) * sum_i sum_c p_ens[i, c] * log softmax(z_s)[i, c]
    L_disc = BCEWithLogits(D([z_s ; z_ens]), [[1, 0]] * B + [[0, 1]] * B)
    loss   = L_kd + L_disc

``z_ens = (1/K) * sum_k z_t^k`` are the teachers' mean logits, and ``D`` is a small MLP on
logits, ``C -> C/8 -> C/64 -> 2`` with ReLUs (the official 1x1 convolutions, 1000 -> 125
-> 15 -> 2 on ImageNet), trained to tell the student's outputs (class 0) from the
ensemble's (class 1). ``L_disc`` is the binary cross-entropy averaged over the 2B x 2
outputs, as the official ``discriminatorLoss`` computes it.

One optimizer runs the min-max. ``D`` is a trainable module of the task, so its weights
are param groups of the run's optimizer. The student's logits reach ``D`` through a
gradient-reversal layer (identity forward, gradient times ``-grl`` backward), so the one
backward pass of ``loss`` gives ``D`` the gradient of ``L_disc`` (it learns to separate
student from teachers) and the student ``grad L_kd - grl * grad L_disc`` (it learns to
fool ``D`` while matching the soft labels); the ensemble's logits need no reversal
(teachers are frozen). ``D``'s learning rate is ``disc_lr`` times the schedule's
learning rate (the official 1e-4 against the student's 0.01 gives the default 0.01): the
loop sets every group's rate each step, then this task's ``on_before_optimizer_step``
rescales ``D``'s groups before the update.

The paper starts the student from pretrained weights: ``init`` names a trained run of the
student's architecture whose best checkpoint is loaded before training (a resumed run
then restores its own checkpoint over it). The paper also trains without weight decay;
this task leaves that to the recipe (``weight_decay: 0``).

Where archbench deviates, and why: the official script adds ``L_disc`` to the student's
loss with no reversal, so the student's gradient from it helps ``D`` rather than fooling
it; archbench follows the paper's adversarial formulation (``grl=1``; ``grl=0`` trains
``D`` alone and leaves the student to ``L_kd``). The official ``D`` applies a ReLU to its
final outputs before the sigmoid cross-entropy, which keeps every probability at 0.5 or
above; archbench leaves the last layer linear. Hidden widths are at least 8 so that
small class counts keep a hidden layer.
"""

from __future__ import annotations

import json
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..runs import MODEL_JSON, locate_checkpoint
from ..train import ClassificationTask, load_checkpoint, register_task
from .concentration import TeacherGroup, teacher_specs

__all__ = ["LogitDiscriminator", "MealV2", "ensemble_soft_ce", "grad_reverse", "load_init"]


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * -ctx.scale, None


def grad_reverse(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Identity forward; multiplies the gradient by ``-scale`` backward."""
    return _GradReverse.apply(x, float(scale))


class LogitDiscriminator(nn.Module):
    """MEAL V2's discriminator: an MLP on class logits, ``C -> C/r -> C/r^2 -> 2``."""

    def __init__(self, num_classes: int, reduction: int = 8, min_width: int = 8) -> None:
        super().__init__()
        h1 = max(num_classes // reduction, min_width)
        h2 = max(num_classes // reduction**2, min_width)
        self.net = nn.Sequential(
            nn.Linear(num_classes, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU(), nn.Linear(h2, 2)
        )

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return self.net(logits)


def ensemble_soft_ce(student: torch.Tensor, teachers: list[torch.Tensor]) -> torch.Tensor:
    """``-(1/B) sum p_ens * log softmax(student)`` with ``p_ens`` the teachers' mean softmax."""
    p_ens = torch.stack([F.softmax(t.float(), dim=-1) for t in teachers]).mean(0)
    return -(p_ens * F.log_softmax(student.float(), dim=-1)).sum(-1).mean()


def discriminator_loss(
    disc: nn.Module, student: torch.Tensor, ensemble: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary cross-entropy of ``disc`` labelling student logits [1, 0] and the ensemble's
    [0, 1], and its accuracy at telling them apart."""
    b = student.shape[0]
    out = disc(torch.cat([student.float(), ensemble.float()], dim=0))
    target = torch.zeros_like(out)
    target[:b, 0] = 1.0
    target[b:, 1] = 1.0
    loss = F.binary_cross_entropy_with_logits(out, target)
    acc = (out.detach().argmax(-1) == target.argmax(-1)).float().mean()
    return loss, acc


def load_init(model: nn.Module, spec: str) -> dict[str, Any]:
    """Load a trained run's best weights into ``model`` (the student's initialisation)."""
    try:
        ck, run = locate_checkpoint(spec, "best")
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"init {spec!r}: {err}; give a trained run folder of the student's architecture"
        ) from None
    info = json.loads((run / MODEL_JSON).read_text())
    try:
        load_checkpoint(ck, model)
    except (RuntimeError, ValueError) as err:
        raise ValueError(
            f"init {spec!r} holds {info.get('model')} built with {info.get('kwargs')}, which "
            f"does not fit the student {type(model).__name__}: {str(err).splitlines()[0]}"
        ) from None
    return info


@register_task("meal_v2")
class MealV2(ClassificationTask):
    """Ensemble soft labels and a logit discriminator, no hard labels (MEAL V2)."""

    def __init__(
        self,
        teachers: list[str],
        init: str = "",
        grl: float = 1.0,
        disc_lr: float = 0.01,
        disc_reduction: int = 8,
    ) -> None:
        super().__init__()
        self.teacher_list = teacher_specs(teachers)
        if grl < 0:
            raise ValueError(f"grl (the reversed gradient's scale) must be >= 0, got {grl}")
        if disc_lr < 0:
            raise ValueError(
                f"disc_lr (a multiple of the learning rate) must be >= 0, got {disc_lr}"
            )
        if int(disc_reduction) != disc_reduction or disc_reduction < 1:
            raise ValueError(f"disc_reduction must be an int >= 1, got {disc_reduction}")
        self.init = str(init)
        self.grl, self.disc_lr, self.disc_reduction = (
            float(grl),
            float(disc_lr),
            int(disc_reduction),
        )

    def setup(self, model: nn.Module, data: Any, recipe: Any) -> None:
        self.frozen["teachers"] = TeacherGroup(self.teacher_list, data)
        if self.init:
            load_init(model, self.init)
        self.trainable["discriminator"] = LogitDiscriminator(data.num_classes, self.disc_reduction)
        self._disc_params = {id(p) for p in self.trainable["discriminator"].parameters()}

    def on_fit_start(self, state: Any) -> None:
        self.frozen["teachers"].check_out_dir(state.out_dir)

    def on_before_optimizer_step(self, state: Any) -> None:
        for group in state.optimizer.param_groups:
            if group["params"] and id(group["params"][0]) in self._disc_params:
                group["lr"] = state.lr * self.disc_lr

    def losses(
        self, logits: torch.Tensor, images: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``L_kd``, ``L_disc`` (the student's logits through the gradient reversal) and the
        discriminator's accuracy."""
        with torch.no_grad():
            outs = self.frozen["teachers"](images)
        kd = ensemble_soft_ce(logits, outs)
        ensemble = torch.stack(outs).mean(0)
        disc, disc_acc = discriminator_loss(
            self.trainable["discriminator"], grad_reverse(logits, self.grl), ensemble
        )
        return kd, disc, disc_acc

    def step(self, batch: Any, state: Any) -> dict[str, Any]:
        logits = state.model(batch.images)
        kd, disc, disc_acc = self.losses(logits, batch.images)
        acc = (logits.detach().argmax(-1) == batch.labels).float().mean()
        return {
            "loss": kd + disc,
            "kd": kd.detach(),
            "disc": disc.detach(),
            "disc_acc": disc_acc,
            "acc": acc,
        }

    def eval_step(self, batch: Any, state: Any) -> dict[str, float]:
        metrics = super().eval_step(batch, state)
        kd, disc, disc_acc = self.losses(state.model(batch.images), batch.images)
        metrics.update(kd=float(kd), disc=float(disc), disc_acc=float(disc_acc))
        return metrics
