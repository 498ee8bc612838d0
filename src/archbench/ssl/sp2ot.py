"""SP²OT: *Semantic-Regularized Progressive Partial Optimal Transport for Imbalanced
Clustering* (Zhang, Zhang, Ren, Li and He, 2024; the journal version of P²OT, ICLR 2024).

Deep imbalanced clustering by pseudo-labels from optimal transport. A cosine classifier
(L2-normalized features against L2-normalized prototypes, scaled by 10) gives each image
logits over ``clusters``; the cost of sending sample ``i`` to cluster ``j`` is
``-log softmax(logits)_ij``. The pseudo-labels of a batch are the transport plan of the
*progressive partial* problem:

- only a fraction ``rho`` of the mass is transported (the samples the model is most
  sure of get labels first); ``rho`` grows from ``rho_base`` (0.1) to 1 over the run on the
  sigmoid ramp ``exp(-5 (1 - t / T)^2)``;
- the samples' marginal is uniform (``1 / n`` each); the clusters' marginal is only
  pulled towards uniform by a KL penalty of weight ``gamma`` (1), so imbalanced clusters
  are allowed.

It becomes an unbalanced problem with a virtual cluster of cost 0 that takes the
``1 - rho`` mass left over, solved by entropic scaling (``epsilon = 0.1``): alternately
``a = mu / (K b)`` and ``b = nu / (K^T a)``, with the real clusters' ``b`` raised to the
power ``gamma / (gamma + epsilon)`` (the KL relaxation), until ``b`` changes by less than
1e-6 or 1000 iterations. The plan times ``n``, without the virtual column, is the soft
target: a confident sample's row sums to about 1, a sample the plan leaves in the virtual
cluster gets a small weight. Each view is trained on the other view's plan with the
cross-entropy (two views of random crops, flips, colour jitter, grayscale).

The semantic regularization (the S of SP²OT) rewards giving similar samples similar
labels: ``lambda * sum_ij S_ij <Q_i, Q_j>`` with ``S`` the cosine similarities of each
sample's ``neighbours`` nearest neighbours in the batch (a symmetric kNN graph). The
majorization-minimization step replaces the concave term by its linearization at the
current plan, so each of the ``mm_steps`` outer iterations solves the P²OT problem above
with cost ``C - lambda * S P_t`` (``P_t`` the current plan scaled by ``n``). ``semantic_weight = 0`` gives P²OT.

Defaults from the official P²OT release (``sk_factor = 0.1``, ``gamma_bound = 1``,
``rho_base = 0.1``, sigmoid ramp, 1000 scaling iterations). Where archbench differs: the
plan is computed per batch without the official logits memory bank; ``semantic_weight``
(0.1), ``neighbours`` (5) and ``mm_steps`` (1) are this module's choices, since the SP²OT
code is not public.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..train import register_task
from ._pretext import normalize_images, pooled_features, raw_to_float, simple_view
from .base import SSLTask

__all__ = ["CosineClassifier", "SP2OT", "knn_similarity", "progressive_partial_ot", "rho_schedule"]


def rho_schedule(step: int, total: int, rho_base: float = 0.1) -> float:
    """The transported mass at ``step`` of ``total``: ``rho_base + (1 - rho_base) *
    exp(-5 (1 - t)^2)`` with ``t = step / total`` clipped to [0, 1]."""
    t = min(max(step, 0), total) / max(total, 1)
    return rho_base + (1 - rho_base) * math.exp(-5.0 * (1 - t) ** 2)


@torch.no_grad()
def progressive_partial_ot(
    cost: torch.Tensor,
    rho: float,
    epsilon: float = 0.1,
    gamma: float = 1.0,
    max_iter: int = 1000,
    tol: float = 1e-6,
) -> torch.Tensor:
    """(n, k) plan of the partial problem with a KL-relaxed cluster marginal.

    Transports ``rho`` of the mass (samples' marginal ``1 / n``, clusters' target
    ``rho / k`` each, a virtual cluster of cost 0 taking ``1 - rho``); ``gamma`` weighs
    the KL penalty on the real clusters' marginal (``inf`` makes it an equality).
    Returns the plan on the real clusters, scaled by ``n`` (rows sum to at most 1).
    """
    if cost.ndim != 2 or not torch.isfinite(cost).all():
        raise ValueError("progressive_partial_ot expects a finite (n, k) cost matrix")
    if not 0.0 < rho <= 1.0:
        raise ValueError(f"the transported mass rho must be in (0, 1], got {rho}")
    n, k = cost.shape
    c = torch.cat([cost.double(), torch.zeros(n, 1, dtype=torch.float64, device=cost.device)], 1)
    kern = torch.exp(-(c - c.min()) / epsilon)
    mu = torch.full((n, 1), 1.0 / n, dtype=torch.float64, device=cost.device)
    nu = torch.full((k + 1, 1), rho / k, dtype=torch.float64, device=cost.device)
    nu[-1] = 1 - rho
    b = torch.full((k + 1, 1), 1.0 / (k + 1), dtype=torch.float64, device=cost.device)
    power = 1.0 if math.isinf(gamma) else gamma / (gamma + epsilon)
    for _ in range(max_iter):
        a = mu / (kern @ b)
        new_b = nu / (kern.T @ a)
        new_b[:-1] = new_b[:-1].pow(power)
        done = torch.linalg.vector_norm(new_b - b) < tol
        b = new_b
        if done:
            break
    a = mu / (kern @ b)
    plan = n * a * kern * b.T
    return plan[:, :-1].float()


def knn_similarity(features: torch.Tensor, neighbours: int) -> torch.Tensor:
    """(n, n) symmetric graph: cosine similarity to each sample's ``neighbours`` nearest
    other samples (clipped at 0), zero elsewhere and on the diagonal."""
    z = F.normalize(features.float(), dim=1)
    sim = (z @ z.T).clamp_min(0)
    sim.fill_diagonal_(0)
    kk = min(neighbours, sim.shape[0] - 1)
    if kk < 1:
        return torch.zeros_like(sim)
    top = sim.topk(kk, dim=1).indices
    keep = torch.zeros_like(sim).scatter_(1, top, 1.0)
    keep = ((keep + keep.T) > 0).float()
    return sim * keep


class CosineClassifier(nn.Module):
    """``scale * normalize(x) @ normalize(prototypes)^T`` (the P²OT head)."""

    def __init__(self, dim: int, clusters: int, scale: float = 10.0) -> None:
        super().__init__()
        self.scale = scale
        self.prototypes = nn.Parameter(torch.randn(clusters, dim) / math.sqrt(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(x, dim=-1) @ F.normalize(self.prototypes, dim=-1).T


@register_task("sp2ot")
class SP2OT(SSLTask):
    """Cluster with pseudo-labels from semantic-regularized progressive partial OT."""

    views = 1

    def __init__(
        self,
        clusters: int = 10,
        rho_base: float = 0.1,
        epsilon: float = 0.1,
        gamma: float = 1.0,
        semantic_weight: float = 0.1,
        neighbours: int = 5,
        mm_steps: int = 1,
    ) -> None:
        super().__init__()
        if clusters < 2:
            raise ValueError(f"sp2ot: clusters must be >= 2, got {clusters}")
        if not 0.0 < rho_base <= 1.0:
            raise ValueError(f"sp2ot: rho_base must be in (0, 1], got {rho_base}")
        if epsilon <= 0 or gamma <= 0 or semantic_weight < 0 or mm_steps < 1 or neighbours < 1:
            raise ValueError(
                "sp2ot: epsilon and gamma must be > 0, semantic_weight >= 0, neighbours and "
                f"mm_steps >= 1; got {epsilon}, {gamma}, {semantic_weight}, {neighbours}, "
                f"{mm_steps}"
            )
        self.clusters, self.rho_base, self.epsilon, self.gamma = clusters, rho_base, epsilon, gamma
        self.semantic_weight, self.neighbours, self.mm_steps = semantic_weight, neighbours, mm_steps
        self.total_steps = 1

    def setup(self, model: nn.Module, data: Any, recipe: Any) -> None:
        super().setup(model, data, recipe)
        self.trainable["head"] = CosineClassifier(model.num_features, self.clusters)
        self.total_steps = max(1, recipe.epochs * math.ceil(len(data.train) / recipe.batch_size))

    def pseudo_labels(
        self, logits: torch.Tensor, features: torch.Tensor, rho: float
    ) -> torch.Tensor:
        """The SP²OT plan of one view: MM iterations of P²OT with the semantic term."""
        cost = -F.log_softmax(logits.detach().double(), dim=1)
        plan = progressive_partial_ot(cost, rho, self.epsilon, self.gamma)
        if self.semantic_weight > 0:
            sim = knn_similarity(features.detach(), self.neighbours).double()
            for _ in range(self.mm_steps):
                linear = cost - self.semantic_weight * (sim @ plan.double())
                plan = progressive_partial_ot(linear, rho, self.epsilon, self.gamma)
        return plan

    def step(self, batch: Any, state: Any) -> dict[str, Any]:
        x = raw_to_float(batch.raw)
        views = [normalize_images(simple_view(x), state.data) for _ in range(2)]
        feats = [pooled_features(state.model, v) for v in views]
        logits = [self.trainable["head"](f).float() for f in feats]
        rho = rho_schedule(int(state.step), self.total_steps, self.rho_base)
        plans = [self.pseudo_labels(lg, f, rho) for lg, f in zip(logits, feats, strict=True)]
        loss = (
            sum(-(plans[1 - i] * F.log_softmax(logits[i], dim=1)).sum(1).mean() for i in range(2))
            / 2
        )
        return {"loss": loss, "rho": torch.tensor(rho)}

    def eval_step(self, batch: Any, state: Any) -> dict[str, float]:
        f = pooled_features(state.model, batch.images)
        logits = self.trainable["head"](f).float()
        plan = self.pseudo_labels(logits, f, 1.0)
        return {"loss": float(-(plan * F.log_softmax(logits, dim=1)).sum(1).mean())}
