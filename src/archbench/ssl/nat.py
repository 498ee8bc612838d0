"""Noise As Targets: *Unsupervised Learning by Predicting Noise* (Bojanowski and Joulin,
ICML 2017).

Every training image gets one target drawn once, uniformly on the unit sphere of a
``dim``-dimensional space (as many targets as images), and the network is trained to map
each image onto its target: ``loss = mean_i || z_i - c_{P(i)} ||^2`` with ``z_i`` the
L2-normalized projection of the image's features. The assignment ``P`` is a
permutation; for each batch it is re-optimized among the targets the batch's images
hold, with the Hungarian method (``scipy.optimize.linear_sum_assignment``), which on unit
vectors is the same as maximizing the summed cosine ``z_i . c_{P(i)}``. The paper
re-assigns every 3 epochs (``reassign_every``); the other epochs train on the current
assignment.

Where archbench differs: the projection is a linear layer on the pooled pre-logit
features (the paper's AlexNet ends in a 4096-d linear layer, normalized); its width is
``dim`` (128 by default, the paper's 4096 does not fit CPU-scale backbones); views are
the engine's augmented images (crop, flip), without the paper's Sobel filtering.
Validation reports ``val_loss`` as the squared distance of each normalized embedding to
its nearest target, since validation images hold no targets.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from ..train import register_task
from ._pretext import pooled_features
from .base import SSLTask

__all__ = ["NoiseAsTargets", "hungarian_reassign", "sphere_targets"]


def sphere_targets(n: int, dim: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` points drawn uniformly on the unit sphere of R^dim (normalized Gaussians)."""
    if n < 1 or dim < 1:
        raise ValueError(f"sphere_targets needs n >= 1 and dim >= 1, got n={n}, dim={dim}")
    return F.normalize(torch.randn(n, dim, generator=generator), dim=1)


def hungarian_reassign(features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The permutation ``p`` of the ``B`` given targets that maximizes
    ``sum_i features[i] . targets[p[i]]`` (row ``i`` of ``features`` gets ``targets[p[i]]``).

    For unit vectors this minimizes ``sum_i ||features[i] - targets[p[i]]||^2``.
    """
    if features.ndim != 2 or targets.shape != features.shape:
        raise ValueError(
            "hungarian_reassign expects features and targets of the same (B, D) shape, got "
            f"{tuple(features.shape)} and {tuple(targets.shape)}"
        )
    score = (features.detach().float() @ targets.detach().float().T).cpu().numpy()
    rows, cols = linear_sum_assignment(score, maximize=True)
    perm = np.empty(len(rows), dtype=np.int64)
    perm[rows] = cols
    return torch.from_numpy(perm).to(features.device)


@register_task("nat")
class NoiseAsTargets(SSLTask):
    """Noise As Targets: fixed random targets on the sphere, Hungarian re-assignment."""

    views = 1

    def __init__(self, dim: int = 128, reassign_every: int = 3) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"nat: dim must be >= 1, got {dim}")
        if reassign_every < 1:
            raise ValueError(f"nat: reassign_every must be >= 1 epoch, got {reassign_every}")
        self.dim = dim
        self.reassign_every = reassign_every
        self.targets = torch.zeros(0, dim)
        self.assignment = torch.zeros(0, dtype=torch.long)

    def setup(self, model: nn.Module, data: Any, recipe: Any) -> None:
        super().setup(model, data, recipe)
        n = len(data.train)
        self.trainable["projector"] = nn.Linear(model.num_features, self.dim)
        gen = torch.Generator().manual_seed(int(recipe.seed))
        self.targets = sphere_targets(n, self.dim, gen)
        self.assignment = torch.randperm(n, generator=gen)

    def to(self, device: torch.device) -> NoiseAsTargets:
        super().to(device)
        self.targets = self.targets.to(device)
        self.assignment = self.assignment.to(device)
        return self

    def embed(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.trainable["projector"](pooled_features(model, images)), dim=-1)

    def step(self, batch: Any, state: Any) -> dict[str, Any]:
        z = self.embed(state.model, batch.images).float()
        idx = batch.index
        held = self.assignment[idx]
        if state.epoch % self.reassign_every == 0:
            perm = hungarian_reassign(z, self.targets[held])
            new = held[perm]
            changed = (new != held).float().mean()
            self.assignment[idx] = new
            held = new
        else:
            changed = torch.zeros(())
        loss = (z - self.targets[held]).pow(2).sum(dim=-1).mean()
        return {"loss": loss, "reassigned": changed}

    def eval_step(self, batch: Any, state: Any) -> dict[str, float]:
        z = self.embed(state.model, batch.images).float()
        nearest = (z @ self.targets.T).max(dim=1).values
        return {"loss": float((2 - 2 * nearest).mean())}

    def state_dict(self) -> dict[str, torch.Tensor]:
        sd = super().state_dict()
        sd["targets"] = self.targets
        sd["assignment"] = self.assignment
        return sd

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        super().load_state_dict(sd)
        self.targets = sd["targets"].to(self.targets.device)
        self.assignment = sd["assignment"].to(self.assignment.device)
