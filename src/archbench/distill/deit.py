"""Distillation through attention: *Training data-efficient image transformers &
distillation through attention* (DeiT, Touvron et al., 2021).

The student has two heads: the class token's head learns from the labels, the
distillation token's head from the teacher, and inference averages the two (the models
do that already: ``deit_*_distilled`` and CAS-ViT with its distillation head). Both of
the paper's objectives (its equations 2 and 3):

- ``kind="hard"``: ``(1 - alpha) * CE(Z_cls, y) + alpha * CE(Z_dist, argmax Z_t)``, with
  alpha = 1/2 as in the paper;
- ``kind="soft"``: ``(1 - alpha) * CE(Z_cls, y) + alpha * tau^2 * KL(softmax(Z_t / tau) ||
  softmax(Z_dist / tau))``, averaged over the batch as the paper writes it (the official
  code divides the summed KL by batch x classes instead, which only rescales alpha).

``y`` are the recipe's soft targets (label smoothing, Mixup/CutMix), as in the paper's
training; the teacher sees the same mixed images.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..train import register_task, soft_cross_entropy
from .logit import kd_loss
from .teacher import DistillationTask

__all__ = ["DeiTDistillation", "student_heads"]


def student_heads(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The class-head and distillation-head logits of a two-head student."""
    return model.forward_distill(x)


@register_task("deit")
class DeiTDistillation(DistillationTask):
    """DeiT's distillation token, hard or soft, from any registered teacher."""

    def __init__(
        self,
        teacher: str,
        kind: str = "hard",
        alpha: float = 0.5,
        tau: float = 1.0,
        cache: str = "",
    ) -> None:
        super().__init__(teacher, cache)
        if kind not in ("hard", "soft"):
            raise ValueError(f"kind must be 'hard' or 'soft', got {kind!r}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self.kind, self.alpha, self.tau = kind, float(alpha), float(tau)

    def check_student(self, model: nn.Module) -> None:
        if not callable(getattr(model, "forward_distill", None)):
            raise ValueError(
                f"DeiT distillation needs a student with a distillation head "
                f"(deit_*_distilled, cas_vit_*); {type(model).__name__} has one head: "
                "use task kd for it"
            )

    def distill_term(self, dist_logits: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if self.kind == "hard":
            return F.cross_entropy(dist_logits.float(), teacher.argmax(-1))
        return kd_loss(dist_logits, teacher, self.tau)

    def step(self, batch: Any, state: Any) -> dict[str, Any]:
        cls_logits, dist_logits = student_heads(state.model, batch.images)
        ce = soft_cross_entropy(cls_logits, batch.targets)
        distill = self.distill_term(dist_logits, self.teacher_logits(batch, state))
        loss = (1 - self.alpha) * ce + self.alpha * distill
        mean = (cls_logits.detach() + dist_logits.detach()) / 2  # what inference predicts
        acc = (mean.argmax(-1) == batch.labels).float().mean()
        return {"loss": loss, "ce": ce.detach(), "distill": distill.detach(), "acc": acc}

    def eval_step(self, batch: Any, state: Any) -> dict[str, float]:
        metrics = super().eval_step(batch, state)
        _, dist_logits = student_heads(state.model, batch.images)
        metrics["distill"] = float(
            self.distill_term(dist_logits, self.teacher_logits(batch, state))
        )
        return metrics
