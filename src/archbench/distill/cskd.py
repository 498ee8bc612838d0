"""Cumulative spatial knowledge distillation: *Cumulative Spatial Knowledge Distillation for
Vision Transformers* (CSKD, Zhao, Song and Liang, ICCV 2023; official code Zzzzz1/CSKD).

A CNN teacher's classifier, applied at every position of its last feature map, gives a
map of dense (spatial) predictions. CSKD supervises every patch token of the ViT student,
each passed through the student's head, with the teacher's prediction at the same
place, and no intermediate features. Its cumulative knowledge fusion (CKF) moves the
target from the teacher's local responses to its global one as training goes on::

    target = r * dense_t + (1 - r) * global_t,    r = 1 - epoch / epochs   ("linear")

(``"x2"``: ``(1 - epoch / epochs)^2``; ``"cos"``: ``cos(pi / 2 * epoch / epochs)``; epoch
0-based, per epoch, as the official code). The whole objective, the official one::

    (1 - alpha) * CE(Z_cls, y) + alpha * CE(Z_dist, argmax global_t)
        + weight * mean over positions CE(dense_s, argmax target)

with alpha = 1/2, weight = 1 and hard targets (``kind="soft"``: KL at temperature tau,
``T^2`` times the KL summed over classes and positions, over the batch size, as the
official code; the DeiT term then averages over the batch like ``kd_loss``). The student's
dense map is average-pooled to the teacher's grid (the official code pools DeiT's 14x14
tokens 2x2 to RegNet's 7x7); where the student's grid is the coarser one, the teacher's
map is pooled instead.

How archbench reaches the heads, for any pair of families: the final features come from
``forward_features``; a (B, C, H, W) map becomes a batch of B*H*W one-pixel maps and a
(B, N, C) token tensor (folded by ``tokens_to_map``, prefix tokens dropped) a batch of
B*H*W tiny token sequences holding one patch token, and ``forward_head`` classifies each
(the official RegNet teacher does the same with its pool-and-linear head). Setup checks
that this is what the head computes on a map that is the same everywhere, so a head that
mixes positions (flattening, attention pooling) fails there with a message.

Deviations: the global response is the teacher's own logits for the image; the official
code averages the dense logits, which is the same number for a pool-then-linear head
(and still the teacher's prediction for heads with a norm or an MLP after pooling). A
two-head student (``deit_*_distilled``) is switched to returning both heads in training
(``set_distilled_training``), so the class head learns the labels and the distillation
head the teacher, dense tokens included, as in the official code; its inference stays
the two heads' mean (the official model also averages the dense predictions in).
One-head students train their single head on both the labels and the teacher's global
prediction (DeiT's hard distillation without a distillation token).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..train import register_task, soft_cross_entropy
from .logit import kd_loss
from .teacher import DistillationTask

__all__ = ["CumulativeSpatialDistillation", "cskd_loss", "dense_logits", "local_share"]

_DECAYS = ("linear", "x2", "cos")


def dense_logits(model: nn.Module, feats: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """``model.forward_head`` applied at every position of ``forward_features`` output.

    Returns (B, classes, H, W) logits (a tuple of them for a model whose head returns
    several in training).
    """
    if feats.ndim == 3:
        grid = model.tokens_to_map(feats)
        b, c, h, w = grid.shape
        one = grid.permute(0, 2, 3, 1).reshape(b * h * w, 1, c)
        # prefix-token heads read position 0 (and 1), pooling heads average: all see the token
        per = one.expand(-1, int(getattr(model, "num_prefix_tokens", 0)) + 1, -1).contiguous()
    elif feats.ndim == 4:
        b, c, h, w = feats.shape
        per = feats.permute(0, 2, 3, 1).reshape(b * h * w, c, 1, 1)
    else:
        raise ValueError(
            f"{type(model).__name__}.forward_features gives shape {tuple(feats.shape)}; dense "
            "predictions need a (B, C, H, W) map or (B, N, C) tokens"
        )
    out = model.forward_head(per)

    def fold(z: torch.Tensor) -> torch.Tensor:
        return z.reshape(b, h, w, z.shape[-1]).permute(0, 3, 1, 2)

    return tuple(fold(z) for z in out) if isinstance(out, (tuple, list)) else fold(out)


def local_share(epoch: int, epochs: int, decay: str = "linear") -> float:
    """CKF's weight ``r`` of the teacher's dense (local) responses at a 0-based epoch."""
    x = epoch / max(1, epochs)
    if decay == "linear":
        return 1.0 - x
    if decay == "x2":
        return (1.0 - x) ** 2
    if decay == "cos":
        return math.cos(math.pi * 0.5 * x)
    raise ValueError(f"decay must be one of {', '.join(_DECAYS)}, got {decay!r}")


def _common_grid(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    size = (min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1]))
    pool = lambda z: z if tuple(z.shape[-2:]) == size else F.adaptive_avg_pool2d(z, size)  # noqa: E731
    return pool(a), pool(b)


def cskd_loss(
    student_dense: torch.Tensor,
    teacher_dense: torch.Tensor,
    teacher_global: torch.Tensor,
    ratio: float,
    kind: str = "hard",
    tau: float = 1.0,
) -> torch.Tensor:
    """The CSKD term: each position of the student's (B, K, h, w) logits against
    ``ratio * teacher_dense + (1 - ratio) * teacher_global`` at that position."""
    s, t = _common_grid(student_dense.float(), teacher_dense.float())
    target = ratio * t + (1.0 - ratio) * teacher_global.float()[:, :, None, None]
    if kind == "hard":
        return F.cross_entropy(s, target.argmax(1))
    log_p_s = F.log_softmax(s / tau, dim=1)
    log_p_t = F.log_softmax(target / tau, dim=1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="sum", log_target=True)
    return kl * tau * tau / s.shape[0]


@register_task("cskd")
class CumulativeSpatialDistillation(DistillationTask):
    """CSKD: the CNN teacher's dense predictions supervise the ViT student's patch tokens,
    fading from local to global responses over training."""

    cacheable = False  # the teacher's dense maps are not what the logit cache stores

    def __init__(
        self,
        teacher: str,
        alpha: float = 0.5,
        weight: float = 1.0,
        decay: str = "linear",
        kind: str = "hard",
        tau: float = 1.0,
    ) -> None:
        super().__init__(teacher)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if weight < 0:
            raise ValueError(f"weight (the CSKD term's) must be >= 0, got {weight}")
        if decay not in _DECAYS:
            raise ValueError(f"decay must be one of {', '.join(_DECAYS)}, got {decay!r}")
        if kind not in ("hard", "soft"):
            raise ValueError(f"kind must be 'hard' or 'soft', got {kind!r}")
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self.alpha, self.weight, self.decay = float(alpha), float(weight), decay
        self.kind, self.tau = kind, float(tau)
        self._distilled_before: bool | None = None

    # ----- set-up ------------------------------------------------------------------
    def setup(self, model: nn.Module, data: Any, recipe: Any) -> None:
        super().setup(model, data, recipe)
        x = data.val.images[:2].float().div(255.0)
        x = (x - torch.tensor(data.mean).view(1, -1, 1, 1)) / torch.tensor(data.std).view(
            1, -1, 1, 1
        )
        device = next(model.parameters()).device
        self._check_dense(self.frozen["teacher"], self.teacher_input(x.cpu()), "teacher")
        self._check_dense(model, x.to(device), "student")
        if callable(getattr(model, "set_distilled_training", None)):
            self._distilled_before = bool(getattr(model, "distilled_training", False))
            model.set_distilled_training(True)

    @staticmethod
    def _check_dense(model: nn.Module, x: torch.Tensor, role: str) -> None:
        name = type(model).__name__
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                feats = model.forward_features(x)
                try:
                    dense = dense_logits(model, feats)
                except Exception as err:
                    raise ValueError(
                        f"CSKD applies the {role}'s classifier at every position of its final "
                        f"features, but {name}.forward_head cannot take one position "
                        f"({str(err).splitlines()[0]}); use a {role} whose head pools and "
                        "then classifies (CNNs, ViTs, mixers)"
                    ) from None
                if feats.ndim == 3:  # one patch token copied to every token, prefix included
                    p = int(getattr(model, "num_prefix_tokens", 0))
                    uniform = feats[:, p : p + 1].expand_as(feats)
                else:
                    uniform = feats[:, :, :1, :1].expand_as(feats)
                whole = model.forward_head(uniform.contiguous())
        finally:
            model.train(was_training)
        if not torch.allclose(dense[:, :, 0, 0], whole, rtol=1e-3, atol=1e-4):
            raise ValueError(
                f"{name}'s head does not classify positions independently (on a map that is "
                "the same everywhere it predicts otherwise than on one of its positions: it "
                f"mixes positions, e.g. by flattening the map); CSKD cannot use it as {role}"
            )

    def on_fit_end(self, state: Any, result: Any) -> None:
        if self._distilled_before is not None:
            state.model.set_distilled_training(self._distilled_before)

    # ----- the loss ----------------------------------------------------------------
    @torch.no_grad()
    def teacher_dense(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's (B, K, H, W) dense logits and its (B, K) logits for the image."""
        teacher = self.frozen["teacher"]
        feats = teacher.forward_features(self.teacher_input(images))
        return dense_logits(teacher, feats).float(), teacher.forward_head(feats).float()

    def global_term(self, logits: torch.Tensor, teacher_global: torch.Tensor) -> torch.Tensor:
        if self.kind == "hard":
            return F.cross_entropy(logits.float(), teacher_global.argmax(-1))
        return kd_loss(logits, teacher_global, self.tau)

    def _terms(self, batch: Any, state: Any) -> dict[str, Any]:
        model = state.model
        feats = model.forward_features(batch.images)
        out = model.forward_head(feats)
        cls_logits, dist_logits = (
            (out[0], out[-1]) if isinstance(out, (tuple, list)) else (out, out)
        )
        dense = dense_logits(model, feats)
        dense = dense[-1] if isinstance(dense, tuple) else dense
        t_dense, t_global = self.teacher_dense(batch.images)
        ratio = local_share(state.epoch, state.recipe.epochs, self.decay)
        return {
            "cls": cls_logits,
            "dist": dist_logits,
            "global": self.global_term(dist_logits, t_global),
            "cskd": cskd_loss(dense, t_dense, t_global, ratio, self.kind, self.tau),
        }

    def step(self, batch: Any, state: Any) -> dict[str, Any]:
        terms = self._terms(batch, state)
        ce = soft_cross_entropy(terms["cls"], batch.targets)
        loss = (1 - self.alpha) * ce + self.alpha * terms["global"] + self.weight * terms["cskd"]
        mean = (terms["cls"].detach() + terms["dist"].detach()) / 2
        return {
            "loss": loss,
            "ce": ce.detach(),
            "distill": terms["global"].detach(),
            "cskd": terms["cskd"].detach(),
            "acc": (mean.argmax(-1) == batch.labels).float().mean(),
        }

    def eval_step(self, batch: Any, state: Any) -> dict[str, float]:
        metrics = super().eval_step(batch, state)
        terms = self._terms(batch, state)
        metrics["distill"] = float(terms["global"])
        metrics["cskd"] = float(terms["cskd"])
        return metrics
