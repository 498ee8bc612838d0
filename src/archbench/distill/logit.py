"""Logit distillation: *Distilling the Knowledge in a Neural Network* (Hinton, Vinyals and
Dean, 2015).

The student matches the teacher's class probabilities softened by a temperature T, and
the labels: ``loss = (1 - alpha) * CE(student, targets) + alpha * T^2 * KL(p_t || p_s)``
with ``p = softmax(logits / T)``. The T^2 factor keeps the soft term's gradients on the
scale of the hard term's as T changes (the paper's section 2).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..train import register_task, soft_cross_entropy
from .teacher import DistillationTask

__all__ = ["LogitDistillation", "kd_loss"]


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch."""
    t = float(temperature)
    log_p_s = F.log_softmax(student.float() / t, dim=-1)
    log_p_t = F.log_softmax(teacher.float() / t, dim=-1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * t * t


@register_task("kd")
class LogitDistillation(DistillationTask):
    """Hinton et al.'s knowledge distillation from any registered teacher's logits."""

    def __init__(
        self, teacher: str, temperature: float = 4.0, alpha: float = 0.5, cache: str = ""
    ) -> None:
        super().__init__(teacher, cache)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha (the distillation weight) must be in [0, 1], got {alpha}")
        self.temperature, self.alpha = float(temperature), float(alpha)

    def step(self, batch: Any, state: Any) -> dict[str, Any]:
        logits = state.model(batch.images)
        ce = soft_cross_entropy(logits, batch.targets)
        kd = kd_loss(logits, self.teacher_logits(batch, state), self.temperature)
        loss = (1 - self.alpha) * ce + self.alpha * kd
        acc = (logits.detach().argmax(-1) == batch.labels).float().mean()
        return {"loss": loss, "ce": ce.detach(), "kd": kd.detach(), "acc": acc}

    def eval_step(self, batch: Any, state: Any) -> dict[str, float]:
        metrics = super().eval_step(batch, state)
        logits = state.model(batch.images)
        metrics["kd"] = float(kd_loss(logits, self.teacher_logits(batch, state), self.temperature))
        return metrics
