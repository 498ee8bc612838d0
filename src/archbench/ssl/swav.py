"""SwAV: Caron, Misra, Mairal, Goyal, Bojanowski & Joulin, *Unsupervised Learning of Visual
Features by Contrasting Cluster Assignments* (NeurIPS 2020).

Online clustering: each crop's projected, L2-normalized embedding is scored against ``K``
learnable, L2-normalized prototypes; the codes of the two global crops are computed by
the Sinkhorn-Knopp algorithm (entropy ``eps``, a few iterations) under the constraint that
the batch is split equally among the prototypes; every crop then predicts the code of
each *other* global crop (the swapped prediction):
``loss = mean over (s, v != s) of -sum_k q_s[k] log softmax(z_v . C / tau)[k]``.
Multi-crop: two global crops at the data's side plus ``small_crops`` crops at
``small_size`` (scales ``(0.14, 1)`` and ``(0.05, 0.14)`` as in the official release).
Prototypes stay frozen for the first ``freeze_prototypes_steps`` steps, as the official
code does. Official defaults kept: ``tau = 0.1``, ``eps = 0.05``, 3 Sinkhorn iterations,
2-layer projection head to 128 dimensions. The feature queue that the paper adds for
small batches is left out.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..train.tasks import Batch, register_task
from .augment import color_jitter, grayscale, multi_crop
from .base import ProjectionHead, SSLTask, encode, pooled_width

__all__ = ["SwAV", "sinkhorn_knopp"]


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, eps: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Soft codes ``(B, K)`` of prototype ``scores`` ``(B, K)``: ``Q = exp(scores / eps)``
    scaled alternately so that every prototype gets ``B / K`` of the mass and every
    sample a total of 1 (the last scaling, so rows sum to 1 exactly)."""
    if scores.ndim != 2:
        raise ValueError(f"sinkhorn_knopp needs (B, K) scores, got {tuple(scores.shape)}")
    if eps <= 0 or iterations < 1:
        raise ValueError(f"eps must be > 0 and iterations >= 1, got {eps}, {iterations}")
    s = scores.float() / eps
    q = torch.exp(s - s.max()).T  # (K, B), shifted for stability (cancels out)
    k, b = q.shape
    q = q / q.sum()
    for _ in range(iterations):
        q = q / q.sum(dim=1, keepdim=True) / k  # each prototype: 1/K of the mass
        q = q / q.sum(dim=0, keepdim=True) / b  # each sample: 1/B of the mass
    return (q * b).T


@register_task("swav")
class SwAV(SSLTask):
    """SwAV: swapped prediction of Sinkhorn-Knopp codes, with multi-crop."""

    def __init__(
        self,
        prototypes: int = 30,
        proj_dim: int = 128,
        proj_hidden: int = 0,
        temperature: float = 0.1,
        eps: float = 0.05,
        sinkhorn_iterations: int = 3,
        small_crops: int = 4,
        small_size: int = 0,
        freeze_prototypes_steps: int = 0,
        jitter: float = 0.5,
    ) -> None:
        super().__init__()
        if prototypes < 2 or proj_dim < 1 or proj_hidden < 0:
            raise ValueError("prototypes must be >= 2, proj_dim >= 1 and proj_hidden >= 0")
        if temperature <= 0 or eps <= 0 or sinkhorn_iterations < 1:
            raise ValueError("temperature and eps must be > 0, sinkhorn_iterations >= 1")
        if small_crops < 0 or small_size < 0 or freeze_prototypes_steps < 0:
            raise ValueError("small_crops, small_size and freeze_prototypes_steps must be >= 0")
        self.n_prototypes, self.proj_dim, self.proj_hidden = prototypes, proj_dim, proj_hidden
        self.temperature, self.eps, self.iterations = temperature, eps, sinkhorn_iterations
        self.small_crops, self.small_size = small_crops, small_size
        self.freeze_steps, self.jitter = freeze_prototypes_steps, jitter
        self.img_size = 0

    def _small(self, img_size: int) -> int:
        return self.small_size or max(8, img_size // 2)

    def check(self, model: nn.Module, data: Any) -> None:
        super().check(model, data)
        if self.small_crops:
            size = self._small(data.img_size)
            x = torch.zeros(2, data.in_chans, size, size, device=next(model.parameters()).device)
            was = model.training
            model.eval()
            try:
                with torch.no_grad():
                    encode(model, x)
            except Exception as err:
                raise ValueError(
                    f"swav's small crops are {size}x{size} and {type(model).__name__} cannot "
                    f"take them ({str(err).splitlines()[0]}); set --method-arg small_size=N "
                    "to a side the model takes, or small_crops=0"
                ) from None
            finally:
                model.train(was)

    def setup(self, model: nn.Module, data: Any, recipe: Any) -> None:
        super().setup(model, data, recipe)
        width = pooled_width(model)
        self.img_size = int(data.img_size)
        self.trainable["projector"] = ProjectionHead(
            width, self.proj_hidden or width, self.proj_dim, layers=2
        )
        self.trainable["prototypes"] = nn.Linear(self.proj_dim, self.n_prototypes, bias=False)

    def crops(self, x: torch.Tensor, training: bool) -> list[torch.Tensor]:
        if not training:
            return [x, x.flip(-1)]
        small = self._small(self.img_size)
        views = multi_crop(
            x,
            sizes=(self.img_size, small),
            counts=(2, self.small_crops),
            scales=((0.14, 1.0), (0.05, 0.14)),
        )
        s = self.jitter
        return [grayscale(color_jitter(v, 0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)) for v in views]

    def step(self, batch: Batch, state: Any) -> dict[str, Any]:
        model = state.model
        with torch.no_grad():  # prototypes on the unit sphere, as the official code keeps them
            w = self.trainable["prototypes"].weight
            w.copy_(F.normalize(w, dim=1))
        views = self.crops(self.raw_images(batch), model.training)
        b = views[0].shape[0]
        # crops of one resolution go through the encoder together
        scores = []
        for size_views in (views[:2], views[2:]):
            if size_views:
                z = F.normalize(
                    self.trainable["projector"](
                        encode(model, self.normalize(torch.cat(size_views)))
                    ),
                    dim=1,
                )
                scores.append(self.trainable["prototypes"](z))
        scores = torch.cat(scores).float()
        loss = scores.new_zeros(())
        n_views = len(views)
        for s in range(2):
            q = sinkhorn_knopp(scores[s * b : (s + 1) * b].detach(), self.eps, self.iterations)
            terms = []
            for v in range(n_views):
                if v == s:
                    continue
                logp = F.log_softmax(scores[v * b : (v + 1) * b] / self.temperature, dim=1)
                terms.append(-(q * logp).sum(1).mean())
            loss = loss + torch.stack(terms).mean()
        return {"loss": loss / 2}

    def on_after_backward(self, state: Any) -> None:
        if state.step < self.freeze_steps:
            self.trainable["prototypes"].weight.grad = None
