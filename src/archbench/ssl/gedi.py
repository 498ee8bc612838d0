"""GEDI: *Unifying Self-Supervised Clustering and Energy-Based Models* (Sansone and
Manhaeve, 2024).

One backbone trained at once as a cluster-based self-supervised model and as an
energy-based generative model of the images. A projector and a cluster head give, for
each image, cluster logits ``l(x)`` (cosine similarity of the L2-normalized projection
to ``clusters`` learned prototypes, divided by ``temperature``). They define both

- the cluster posterior ``p(y | x) = softmax(l(x))``, and
- the energy ``E(x) = -logsumexp_y l(x)`` of the unnormalized density ``p(x) ~ exp(-E(x))``.

The objective is the sum of

- ``L_GEN``: maximum likelihood of the energy model by contrastive divergence,
  ``mean E(x_data) - mean E(x_model)``, with ``x_model`` drawn by stochastic gradient
  Langevin dynamics (``sgld_steps`` steps of ``x <- x - sgld_lr * dE/dx + sgld_noise * N(0,
  1)``) from a replay buffer of past samples (reinitialized uniformly with probability
  ``reinit``), as in JEM, which the paper's generative part follows;
- ``L_INV``: the cluster assignments of two augmented views must agree: the symmetric
  cross-entropy ``-(p(y|x') . log p(y|x) + p(y|x) . log p(y|x')) / 2``;
- ``L_PRIOR``: ``KL(uniform || mean_batch p(y|x))``, the term of the paper's lower bound
  that rules out cluster collapse (every image in one cluster).

``L_INV`` penalizes representations that change with the augmentation, ``L_PRIOR``
cluster collapse, and ``L_GEN`` the representational collapse that the two discriminative
terms alone allow (a constant encoder has an energy that cannot tell data from noise).

Where archbench differs: the official code was not available here, so the terms follow
the paper's description; the SGLD defaults are JEM's (20 steps, step 1, noise 0.01,
5% reinitialization) but the replay buffer holds 2000 samples (JEM: 10000), since it is
saved in every checkpoint and run in the data's normalized space starting
from uniform noise in [-1, 1]; data and model samples go through the network in one batch
so BatchNorm layers normalize them alike. Weights of the three terms are 1.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..train import register_task
from ._pretext import normalize_images, pooled_features, raw_to_float, simple_view
from .base import SSLTask

__all__ = ["GEDI", "energy", "gedi_terms", "sgld_sample"]


def energy(logits: torch.Tensor) -> torch.Tensor:
    """``E(x) = -logsumexp_y l(x)_y`` per sample."""
    return -torch.logsumexp(logits.float(), dim=-1)


def gedi_terms(
    logits_a: torch.Tensor,
    logits_b: torch.Tensor,
    energy_data: torch.Tensor,
    energy_model: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """The three GEDI terms from two views' cluster logits and the energies of data and
    model samples."""
    la, lb = F.log_softmax(logits_a.float(), -1), F.log_softmax(logits_b.float(), -1)
    pa, pb = la.exp(), lb.exp()
    inv = -((pb * la).sum(-1) + (pa * lb).sum(-1)).mean() / 2
    k = logits_a.shape[-1]
    mean_p = torch.cat([pa, pb]).mean(0)
    prior = (torch.log(torch.tensor(1.0 / k)) - mean_p.clamp_min(1e-12).log()).mean()
    gen = energy_data.mean() - energy_model.mean()
    return {"gen": gen, "inv": inv, "prior": prior}


def sgld_sample(
    energy_fn: Any, start: torch.Tensor, steps: int, lr: float, noise: float
) -> torch.Tensor:
    """Langevin samples: ``x <- x - lr * dE/dx + noise * N(0, 1)`` for ``steps`` steps."""
    x = start.detach().clone()
    for _ in range(steps):
        x.requires_grad_(True)
        grad = torch.autograd.grad(energy_fn(x).sum(), x)[0]
        x = (x - lr * grad + noise * torch.randn_like(x)).detach()
    return x


class ClusterHead(nn.Module):
    """Projector (Linear-BN-ReLU-Linear) and cosine prototypes over ``temperature``."""

    def __init__(self, dim: int, proj: int, clusters: int, temperature: float) -> None:
        super().__init__()
        self.projector = nn.Sequential(
            nn.Linear(dim, proj), nn.BatchNorm1d(proj), nn.ReLU(inplace=True), nn.Linear(proj, proj)
        )
        self.prototypes = nn.Parameter(torch.randn(clusters, proj) / proj**0.5)
        self.temperature = temperature

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = F.normalize(self.projector(h), dim=-1)
        return z @ F.normalize(self.prototypes, dim=-1).T / self.temperature


@register_task("gedi")
class GEDI(SSLTask):
    """GEDI: self-supervised clustering and an energy-based model on one backbone."""

    views = 1

    def __init__(
        self,
        clusters: int = 10,
        proj_dim: int = 128,
        temperature: float = 0.1,
        sgld_steps: int = 20,
        sgld_lr: float = 1.0,
        sgld_noise: float = 0.01,
        buffer_size: int = 2000,
        reinit: float = 0.05,
        gen_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if clusters < 2 or proj_dim < 1 or temperature <= 0:
            raise ValueError(
                f"gedi: clusters must be >= 2, proj_dim >= 1, temperature > 0; got "
                f"{clusters}, {proj_dim}, {temperature}"
            )
        if sgld_steps < 0 or sgld_lr < 0 or sgld_noise < 0 or buffer_size < 1:
            raise ValueError("gedi: sgld_steps, sgld_lr, sgld_noise must be >= 0, buffer_size >= 1")
        if not 0.0 <= reinit <= 1.0 or gen_weight < 0:
            raise ValueError(
                f"gedi: reinit must be in [0, 1], gen_weight >= 0; got {reinit}, {gen_weight}"
            )
        self.clusters, self.proj_dim, self.temperature = clusters, proj_dim, temperature
        self.sgld_steps, self.sgld_lr, self.sgld_noise = sgld_steps, sgld_lr, sgld_noise
        self.buffer_size, self.reinit, self.gen_weight = buffer_size, reinit, gen_weight
        self.buffer = torch.zeros(0)

    def setup(self, model: nn.Module, data: Any, recipe: Any) -> None:
        super().setup(model, data, recipe)
        self.trainable["head"] = ClusterHead(
            int(model.num_features), self.proj_dim, self.clusters, self.temperature
        )
        shape = (self.buffer_size, int(data.in_chans), int(data.img_size), int(data.img_size))
        gen = torch.Generator().manual_seed(int(recipe.seed))
        self.buffer = torch.rand(shape, generator=gen) * 2 - 1

    def to(self, device: torch.device) -> GEDI:
        super().to(device)
        self.buffer = self.buffer.to(device)
        return self

    def logits(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return self.trainable["head"](pooled_features(model, x))

    def model_samples(self, model: nn.Module, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, self.buffer.shape[0], (n,)).to(self.buffer.device)
        start = self.buffer[idx]
        fresh = (torch.rand(n, 1, 1, 1) < self.reinit).to(start.device)
        start = torch.where(fresh, torch.rand_like(start) * 2 - 1, start)
        was = model.training, self.trainable.training
        model.eval()
        self.trainable.eval()
        flags = [p.requires_grad for p in model.parameters()]
        for p in model.parameters():
            p.requires_grad_(False)
        try:
            samples = sgld_sample(
                lambda x: energy(self.logits(model, x)),
                start,
                self.sgld_steps,
                self.sgld_lr,
                self.sgld_noise,
            )
        finally:
            for p, flag in zip(model.parameters(), flags):
                p.requires_grad_(flag)
            model.train(was[0])
            self.trainable.train(was[1])
        return samples, idx

    def step(self, batch: Any, state: Any) -> dict[str, Any]:
        x = raw_to_float(batch.raw)
        b = x.shape[0]
        va = normalize_images(simple_view(x), state.data)
        vb = normalize_images(simple_view(x), state.data)
        parts = [va, vb]
        if self.gen_weight > 0:
            samples, idx = self.model_samples(state.model, b)
            self.buffer[idx] = samples
            parts.append(samples.to(va.dtype))
        logits = self.logits(state.model, torch.cat(parts))
        la, lb = logits[:b], logits[b : 2 * b]
        e_model = energy(logits[2 * b :]) if self.gen_weight > 0 else energy(la).detach()
        terms = gedi_terms(la, lb, energy(la), e_model)
        loss = self.gen_weight * terms["gen"] + terms["inv"] + terms["prior"]
        return {"loss": loss, **{k: v.detach() for k, v in terms.items()}}

    def eval_step(self, batch: Any, state: Any) -> dict[str, float]:
        logits = self.logits(state.model, batch.images)
        t = gedi_terms(logits, logits, energy(logits), energy(logits))
        return {"loss": float(t["inv"] + t["prior"]), "energy": float(energy(logits).mean())}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**super().state_dict(), "buffer": self.buffer}

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        super().load_state_dict(sd)
        self.buffer = sd["buffer"].to(self.buffer.device)
