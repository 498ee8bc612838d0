"""Knowledge distillation with the ND loss: *Improving Knowledge Distillation via
Regularizing Feature Norm and Direction* (Wang et al., 2023; "KD++").

The class means of the teacher's pre-logit features over the training split are strong
class prototypes. The student's pre-logit feature ``s`` of a sample of class ``y`` is
pulled towards the direction of the teacher's class mean ``c_y`` and pushed to a large
norm, at least the teacher's own feature norm ``|t|`` on that sample (the paper's ND
loss, as its official code computes it, averaged over the batch)::

    nd = 1 - <s, c_y / |c_y|> / max(|s|, |t|)

While ``|s| < |t|`` the loss falls by growing the projection of ``s`` on ``c_y``; once
``|s| >= |t|`` it is the cosine distance to the class mean. The step adds it to KD::

    ce_weight * CE(z_s, y_soft) + kd_weight * ramp * T^2 KL(p_t || p_s) + nd_weight * nd

with ``ramp = min(1, epoch / kd_warmup_epochs)`` (epoch counting from 0, the official
warm-up of the KD term). Defaults are the official CIFAR-100 set-up for ResNet-56 ->
ResNet-20 (``nd_weight = 2``, ``kd_weight = 1``, ``T = 4``, 20 warm-up epochs; its
ImageNet runs use T = 1, 5 warm-up epochs, ``kd_weight`` 2.5-4 and ``nd_weight`` 1-4).

The class means are computed in ``setup`` from the teacher (on the teacher's input
conversion) over the training split without augmentation, and kept in the task's state
(``centres``), so a resumed run uses exactly the same ones. When the student's
pre-logit width differs from the teacher's, the student's feature goes through the
official embedding adapter first: BatchNorm1d, dropout 0.5, linear to the teacher's
width (trained with the student). ``y`` is the sample's class before Mixup/CutMix.

Where this differs from the official code: the class means are computed in full
precision (the official files round them to 4 decimals), the adapter's weights are drawn
from the recipe's seed, and the CE uses the recipe's soft targets (label smoothing,
mixing) as every archbench task does.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..train import register_task, soft_cross_entropy
from ..train.evaluate import normalized_batches
from ..train.tasks import classification_metrics
from .logit import kd_loss
from .teacher import DistillationTask

__all__ = ["NormDirectionDistillation", "nd_loss"]


def nd_loss(
    student: torch.Tensor, teacher: torch.Tensor, centres: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """``1 - <s, c_y / |c_y|> / max(|s|, |t|)``, averaged over the batch.

    ``student`` and ``teacher``: (B, D) pre-logit features; ``centres``: (classes, D)
    teacher class means; ``labels``: (B,) class indices.
    """
    s = student.float()
    direction = F.normalize(centres[labels].float(), dim=-1)
    scale = torch.maximum(s.norm(dim=-1), teacher.float().norm(dim=-1))
    return (1.0 - (s * direction).sum(-1) / scale).mean()


@register_task("kd_nd")
class NormDirectionDistillation(DistillationTask):
    """KD plus the ND loss towards the teacher's class-mean directions (KD++)."""

    def __init__(
        self,
        teacher: str,
        nd_weight: float = 2.0,
        kd_weight: float = 1.0,
        temperature: float = 4.0,
        kd_warmup_epochs: float = 20.0,
        ce_weight: float = 1.0,
        cache: str = "",
    ) -> None:
        super().__init__(teacher, cache)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        for name, value in (
            ("nd_weight", nd_weight),
            ("kd_weight", kd_weight),
            ("kd_warmup_epochs", kd_warmup_epochs),
            ("ce_weight", ce_weight),
        ):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        self.nd_weight, self.kd_weight = float(nd_weight), float(kd_weight)
        self.temperature, self.kd_warmup_epochs = float(temperature), float(kd_warmup_epochs)
        self.ce_weight = float(ce_weight)
        self.centres = torch.zeros(0)

    # ----- set-up ------------------------------------------------------------------
    def setup(self, model: nn.Module, data: Any, recipe: Any) -> None:
        super().setup(model, data, recipe)
        device = next(model.parameters()).device
        self.frozen.to(device)
        self.centres = self.class_means(data, recipe.eval_batch_size, device)
        x = next(normalized_batches(data.val, 2))[0].to(device)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                d_s = model.forward_head(model.forward_features(x), pre_logits=True).shape[-1]
        finally:
            model.train(was_training)
        d_t = self.centres.shape[1]
        if d_s != d_t:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(recipe.seed))
                adapter = nn.Sequential(nn.BatchNorm1d(d_s), nn.Dropout(0.5), nn.Linear(d_s, d_t))
                nn.init.zeros_(adapter[2].bias)
            self.trainable["adapter"] = adapter.to(device)

    @torch.no_grad()
    def teacher_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """The teacher's pre-logit features of a (student-normalized) batch."""
        teacher = self.frozen["teacher"]
        feats = teacher.forward_features(self.teacher_input(images))
        return teacher.forward_head(feats, pre_logits=True).float()

    @torch.no_grad()
    def teacher_outputs(self, batch: Any, state: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's pre-logit features and logits of the batch, from one pass (the
        logits from the cache when one is set)."""
        teacher = self.frozen["teacher"]
        feats = teacher.forward_features(self.teacher_input(batch.images))
        emb = teacher.forward_head(feats, pre_logits=True).float()
        if self.cache_dir and state.model.training:
            return emb, self.teacher_logits(batch, state)
        return emb, teacher.forward_head(feats).float()

    def class_means(self, data: Any, batch_size: int, device: torch.device) -> torch.Tensor:
        """Mean teacher pre-logit feature of each class over the unaugmented training split."""
        sums: torch.Tensor | None = None
        counts = torch.zeros(data.num_classes, dtype=torch.float64)
        for x, y, _ in normalized_batches(data.train, batch_size):
            emb = self.teacher_embedding(x.to(device)).double().cpu()
            if sums is None:
                sums = torch.zeros(data.num_classes, emb.shape[1], dtype=torch.float64)
            sums.index_add_(0, y, emb)
            counts += torch.bincount(y, minlength=data.num_classes).double()
        empty = [int(c) for c in torch.nonzero(counts == 0).flatten()]
        if sums is None or empty:
            names = [data.class_names[c] if c < len(data.class_names) else str(c) for c in empty]
            raise ValueError(
                f"kd_nd needs the teacher's class mean of every class, but the training split "
                f"of {data.spec!r} has no images of class(es) {empty} ({', '.join(names)}); "
                "use a training split that holds every class"
            )
        return (sums / counts[:, None]).float().to(device)

    # ----- state -------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**super().state_dict(), "centres": self.centres}

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        super().load_state_dict(sd)
        if "centres" in sd:
            self.centres = sd["centres"].to(self.centres.device, torch.float32)

    def to(self, device: torch.device) -> NormDirectionDistillation:
        super().to(device)
        self.centres = self.centres.to(device)
        return self

    # ----- steps -------------------------------------------------------------------
    def losses(self, batch: Any, state: Any) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        model = state.model
        feats = model.forward_features(batch.images)
        emb = model.forward_head(feats, pre_logits=True)
        logits = model.forward_head(feats)
        if isinstance(logits, (tuple, list)):
            raise ValueError(
                f"kd_nd: {type(model).__name__} returns {len(logits)} heads' logits in "
                "training; kd_nd trains one head (turn the distillation head off, or use task deit)"
            )
        if "adapter" in self.trainable:
            emb = self.trainable["adapter"](emb)
        t_emb, t_logits = self.teacher_outputs(batch, state)
        return {
            "ce": soft_cross_entropy(logits, batch.targets),
            "kd": kd_loss(logits, t_logits, self.temperature),
            "nd": nd_loss(emb, t_emb, self.centres, batch.labels),
        }, logits

    def kd_ramp(self, epoch: int) -> float:
        """The KD term's warm-up factor ``min(1, epoch / kd_warmup_epochs)``."""
        if self.kd_warmup_epochs <= 0:
            return 1.0
        return min(1.0, epoch / self.kd_warmup_epochs)

    def step(self, batch: Any, state: Any) -> dict[str, Any]:
        parts, logits = self.losses(batch, state)
        ramp = self.kd_ramp(state.epoch)
        loss = (
            self.ce_weight * parts["ce"]
            + self.kd_weight * ramp * parts["kd"]
            + self.nd_weight * parts["nd"]
        )
        out: dict[str, Any] = {k: v.detach() for k, v in parts.items()}
        out["loss"] = loss
        out["acc"] = (logits.detach().argmax(-1) == batch.labels).float().mean()
        return out

    def eval_step(self, batch: Any, state: Any) -> dict[str, float]:
        parts, logits = self.losses(batch, state)
        m = classification_metrics(logits, batch.labels)
        n = m.pop("n")
        return {
            **{k: v / n for k, v in m.items()},
            "kd": float(parts["kd"]),
            "nd": float(parts["nd"]),
        }
