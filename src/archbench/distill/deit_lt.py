"""DeiT-LT: *DeiT-LT: Distillation Strikes Back for Vision Transformer Training on
Long-Tailed Datasets* (Rangwani et al., CVPR 2024; official code val-iisc/DeiT-LT).

DeiT's two-token student (:mod:`archbench.distill.deit`) trained on long-tailed data,
with two changes:

- **Out-of-distribution distillation.** The CNN teacher (trained with weak augmentation)
  labels strongly augmented images: random resized crops down to ``ood_scale`` of the
  area, flips, and Mixup/CutMix within the batch (DeiT's alphas 0.8 and 1.0, switching
  with probability 1/2). Student and teacher see the same such view; the class head
  learns its mixed labels, the distillation head the teacher's hard prediction on it.
  The view is made here from ``batch.raw`` with :class:`archbench.data.BatchAugment`
  (``ood=False`` uses the recipe's own batch instead), so the teacher never sees the
  student's recipe batch and its outputs are not cached (``cacheable = False``).
- **Deferred re-weighting (DRW) of the distillation loss.** From epoch
  ``round(drw_start * epochs)`` on, the distillation head's cross-entropy weighs each
  sample by its teacher label's class-balanced weight (Cui et al., effective number of
  samples)::

      w_c = (1 - beta) / (1 - beta^n_c),   normalized so that sum_c w_c = classes
      L_dist = sum_i w_{yt_i} CE(Z_dist_i, yt_i) / sum_i w_{yt_i},   yt = argmax Z_t

  (PyTorch's weighted mean, as the official ``F.cross_entropy(..., weight=w)``), and
  the views are no longer mixed (the official scripts' ``--no-mixup-drw``).

The loss is DeiT's hard one, ``(1 - alpha) * CE(Z_cls, y~) + alpha * L_dist``, alpha = 1/2.
Defaults are the official CIFAR-LT scripts': beta = 0.9999, DRW from epoch 1100 of 1200
(``drw_start = 11/12``), hard distillation, DeiT's Mixup/CutMix and crop scale (0.08, 1).

Deviations: no RandAugment, colour jitter or random erasing in the OOD view (archbench's
batched transforms have crops, flips, Cutout and mixing; the mixing and small crops are
what makes the view out-of-distribution for the teacher). The class head keeps the
recipe's label smoothing in the DRW phase (the official code switches to plain CE).
The paper's SAM-trained ("flat") teacher is a choice of teacher run, not of this task;
its optional multi-crop variant and PaCo-trained teachers are not reproduced.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data import BatchAugment
from ..train import register_task, soft_cross_entropy
from .deit import DeiTDistillation, student_heads

__all__ = ["DeiTLTDistillation", "class_balanced_weights", "reweighted_hard_distillation"]


def class_balanced_weights(counts: Any, beta: float) -> torch.Tensor:
    """``(1 - beta) / (1 - beta^n_c)`` per class, scaled to sum to the number of classes."""
    n = torch.as_tensor(counts, dtype=torch.float64)
    if (n <= 0).any():
        empty = [i for i, v in enumerate(n.tolist()) if v <= 0]
        raise ValueError(
            f"class(es) {empty} have no training samples; class-balanced re-weighting needs "
            "every class in the training split (drop those classes or add samples)"
        )
    w = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), n))
    return (w / w.sum() * len(n)).float()


def reweighted_hard_distillation(
    dist_logits: torch.Tensor, teacher_logits: torch.Tensor, weights: torch.Tensor | None
) -> torch.Tensor:
    """Cross-entropy of the distillation head against the teacher's argmax, each sample
    weighted by its teacher class's weight (weighted mean); plain mean without weights."""
    target = teacher_logits.argmax(-1)
    w = None if weights is None else weights.to(dist_logits.device)
    return F.cross_entropy(dist_logits.float(), target, weight=w)


@register_task("deit_lt")
class DeiTLTDistillation(DeiTDistillation):
    """DeiT-LT: DeiT's distillation token learning a CNN teacher's hard labels on
    out-of-distribution views, re-weighted for the tail classes late in training."""

    cacheable = False  # the teacher labels views made here, not the recipe's batch

    def __init__(
        self,
        teacher: str,
        alpha: float = 0.5,
        beta: float = 0.9999,
        drw_start: float = 11 / 12,
        ood: bool = True,
        ood_scale: float = 0.08,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
    ) -> None:
        super().__init__(teacher, kind="hard", alpha=alpha)
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        if not 0.0 <= drw_start <= 1.0:
            raise ValueError(
                f"drw_start (the share of the epochs before re-weighting) must be in [0, 1], "
                f"got {drw_start}"
            )
        if not 0.0 < ood_scale <= 1.0:
            raise ValueError(
                f"ood_scale (smallest crop area share) must be in (0, 1], got {ood_scale}"
            )
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError(
                f"mixup_alpha and cutmix_alpha must be >= 0, got {mixup_alpha}, {cutmix_alpha}"
            )
        self.beta, self.drw_start, self.ood = float(beta), float(drw_start), bool(ood)
        self.ood_scale = float(ood_scale)
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)

    # ----- set-up ------------------------------------------------------------------
    def setup(self, model: nn.Module, data: Any, recipe: Any) -> None:
        super().setup(model, data, recipe)
        self.class_counts = data.train.class_counts(data.num_classes)
        self.weights = class_balanced_weights(self.class_counts, self.beta)
        self.drw_epoch = round(self.drw_start * recipe.epochs)
        common = dict(
            mean=tuple(data.mean),
            std=tuple(data.std),
            num_classes=data.num_classes,
            img_size=data.img_size,
            crop="rrc",
            crop_scale=(self.ood_scale, 1.0),
            hflip=0.5,
            label_smoothing=recipe.label_smoothing,
        )
        self.ood_mixed = BatchAugment(
            **common, mixup_alpha=self.mixup_alpha, cutmix_alpha=self.cutmix_alpha
        )
        self.ood_plain = BatchAugment(**common)
        self.seed = int(recipe.seed)

    def in_drw(self, epoch: int) -> bool:
        return epoch >= self.drw_epoch

    def ood_view(self, batch: Any, state: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The strongly augmented view of ``batch.raw`` and its (mixed) soft targets,
        drawn from a generator keyed by the seed and the global step (resumes exactly)."""
        key = hashlib.sha256(f"deit_lt/{self.seed}/{state.step}".encode()).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(key[:8], "little") >> 1)
        aug = self.ood_plain if self.in_drw(state.epoch) else self.ood_mixed
        return aug(batch.raw, batch.labels, gen)

    # ----- the loss ----------------------------------------------------------------
    def distill_weights(self, epoch: int) -> torch.Tensor | None:
        return self.weights if self.in_drw(epoch) else None

    @torch.no_grad()
    def teacher_on(self, images: torch.Tensor) -> torch.Tensor:
        return self.frozen["teacher"](self.teacher_input(images)).float()

    def step(self, batch: Any, state: Any) -> dict[str, Any]:
        if self.ood:
            images, targets = self.ood_view(batch, state)
        else:
            images, targets = batch.images, batch.targets
        cls_logits, dist_logits = student_heads(state.model, images)
        ce = soft_cross_entropy(cls_logits, targets)
        distill = reweighted_hard_distillation(
            dist_logits, self.teacher_on(images), self.distill_weights(state.epoch)
        )
        loss = (1 - self.alpha) * ce + self.alpha * distill
        mean = (cls_logits.detach() + dist_logits.detach()) / 2
        return {
            "loss": loss,
            "ce": ce.detach(),
            "distill": distill.detach(),
            "drw": float(self.in_drw(state.epoch)),
            "acc": (mean.argmax(-1) == batch.labels).float().mean(),
        }

    def eval_step(self, batch: Any, state: Any) -> dict[str, float]:
        metrics = super(DeiTDistillation, self).eval_step(batch, state)
        cls_logits, dist_logits = student_heads(state.model, batch.images)
        teacher = self.teacher_on(batch.images)
        metrics["distill"] = float(
            reweighted_hard_distillation(dist_logits, teacher, self.distill_weights(state.epoch))
        )
        metrics["cls_top1"] = float((cls_logits.argmax(-1) == batch.labels).float().mean())
        metrics["dist_top1"] = float((dist_logits.argmax(-1) == batch.labels).float().mean())
        return metrics
