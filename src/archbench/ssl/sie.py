"""SIE: *Self-supervised learning of Split Invariant-Equivariant representations*
(Garrido, Najman and LeCun, ICML 2023).

The pooled representation is split in two: its first ``F - equi`` channels are meant to
be invariant to the transformation between two views, its last ``equi`` channels
equivariant to it. Each part has its own VICReg expander (Linear-BN-ReLU, Linear-BN-ReLU,
Linear; widths ``expander`` scaled by the part's share of the representation). Losses,
with the official coefficients:

- invariant part: ``sim * MSE(inv(x), inv(y))``;
- equivariant part: ``sim * equi_factor * MSE(pred(eq(x), t), eq(y))`` where the
  predictor is SIE's hypernetwork: a linear map of the transformation's parameters
  ``t`` gives the weights of an ``E x E`` linear layer applied to ``eq(x)`` (no bias, no
  activation: the official default ``hypernetwork = linear``, empty ``predictor``), so the
  prediction cannot ignore ``t`` and collapse to invariance;
- variance: ``std * mean(relu(1 - std_j))`` per view (halved) on the concatenated
  embeddings, and on the prediction;
- covariance: ``cov * sum of squared off-diagonal covariances / dim`` per view, on the
  concatenated embeddings (so the common parts between the two halves are regularized
  too).

Coefficients: ``sim = 10``, ``equi_factor = 4.5``, ``std = 10``, ``cov = 1``, the
equivariant part half of the representation (256 of ResNet-18's 512).

Where archbench differs: the paper's transformation is the 3-D rotation of a rendered
object (3DIEBench, a quaternion); archbench's datasets hold no such renderings, so the
transformation is a planar rotation of the image by a multiple of 90 degrees, given to
the predictor as ``t = (cos d, sin d, cos 2d, sin 2d)`` with ``d`` the relative angle from
the first view to the second (a 4-vector, as the paper's quaternion is). Both views share one random
resized crop and differ by their rotation and by colour jitter. The expander is 4 times
the representation wide by default (the paper's 2048-2048-2048 on 512).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.transforms import random_resized_crop
from ..train import register_task
from ._pretext import normalize_images, pooled_features, raw_to_float
from .augment import color_jitter, grayscale, rotate90
from .base import SSLTask

__all__ = ["HyperPredictor", "SIE", "rotation_parameters", "sie_loss", "vicreg_regularizers"]


def rotation_parameters(k: torch.Tensor) -> torch.Tensor:
    """(B, 4): ``(cos d, sin d, cos 2d, sin 2d)`` of the angles ``d = k * 90`` degrees."""
    d = k.float() * (math.pi / 2)
    return torch.stack([d.cos(), d.sin(), (2 * d).cos(), (2 * d).sin()], dim=1)


def expander(dim_in: int, widths: list[int]) -> nn.Sequential:
    """VICReg's expander: Linear-BN-ReLU for every width but the last, then Linear."""
    layers: list[nn.Module] = []
    dims = [dim_in, *widths]
    for a, b in zip(dims[:-2], dims[1:-1]):
        layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
    layers.append(nn.Linear(dims[-2], dims[-1], bias=False))
    return nn.Sequential(*layers)


class HyperPredictor(nn.Module):
    """SIE's predictor: ``W(t) = reshape(A t)`` (a linear hypernetwork without bias) and
    ``pred = W(t) e`` for each sample."""

    def __init__(self, dim: int, latent: int) -> None:
        super().__init__()
        self.dim = dim
        self.hypernet = nn.Linear(latent, dim * dim, bias=False)

    def forward(self, e: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        w = self.hypernet(t).view(-1, self.dim, self.dim)
        return torch.bmm(w, e.unsqueeze(-1)).squeeze(-1)


def _off_diagonal(m: torch.Tensor) -> torch.Tensor:
    n = m.shape[0]
    return m.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def vicreg_regularizers(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(variance term ``mean(relu(1 - sqrt(var + 1e-4)))``, covariance term ``sum of
    squared off-diagonal covariances / dim``) of a batch of embeddings (B, D)."""
    z = z - z.mean(dim=0)
    std = torch.sqrt(z.var(dim=0) + 1e-4)
    cov = (z.T @ z) / (z.shape[0] - 1)
    return F.relu(1 - std).mean(), _off_diagonal(cov).pow(2).sum() / z.shape[1]


def sie_loss(
    inv_x: torch.Tensor,
    inv_y: torch.Tensor,
    eq_x: torch.Tensor,
    eq_y: torch.Tensor,
    pred_y: torch.Tensor,
    sim: float = 10.0,
    equi_factor: float = 4.5,
    std: float = 10.0,
    cov: float = 1.0,
) -> dict[str, torch.Tensor]:
    """SIE's loss from the two parts of both views' embeddings and the prediction of
    ``eq_y`` from ``eq_x``; a dict with ``loss`` and its terms."""
    inv = F.mse_loss(inv_x, inv_y)
    equi = F.mse_loss(pred_y, eq_y)
    x = torch.cat([inv_x, eq_x], dim=1)
    y = torch.cat([inv_y, eq_y], dim=1)
    std_x, cov_x = vicreg_regularizers(x)
    std_y, cov_y = vicreg_regularizers(y)
    std_p, _ = vicreg_regularizers(pred_y)
    std_term = std_x / 2 + std_y / 2
    pred_std = std_p / 2
    cov_term = cov_x + cov_y
    loss = sim * inv + equi_factor * sim * equi + std * std_term + std * pred_std + cov * cov_term
    return {"loss": loss, "inv": inv, "equi": equi, "std": std_term, "cov": cov_term}


@register_task("sie")
class SIE(SSLTask):
    """Split invariant-equivariant representations with a hypernetwork predictor."""

    views = 1

    def __init__(
        self,
        equi: int = 0,
        expander_width: int = 0,
        sim: float = 10.0,
        equi_factor: float = 4.5,
        std: float = 10.0,
        cov: float = 1.0,
    ) -> None:
        super().__init__()
        if equi < 0 or expander_width < 0:
            raise ValueError(
                f"sie: equi and expander_width must be >= 0 (0: automatic), got {equi}, "
                f"{expander_width}"
            )
        self.equi, self.expander_width = equi, expander_width
        self.coefs = dict(sim=sim, equi_factor=equi_factor, std=std, cov=cov)

    def setup(self, model: nn.Module, data: Any, recipe: Any) -> None:
        super().setup(model, data, recipe)
        f = int(model.num_features)
        equi = self.equi or f // 2
        if not 1 <= equi < f:
            raise ValueError(
                f"sie: equi must leave both parts non-empty (1..{f - 1} for "
                f"{type(model).__name__}'s {f} features), got {equi}"
            )
        self.split = f - equi
        width = self.expander_width or 4 * f
        inv_w = max(1, round(width * self.split / f))
        eq_w = max(1, round(width * equi / f))
        self.trainable["expander_inv"] = expander(self.split, [inv_w] * 3)
        self.trainable["expander_equi"] = expander(equi, [eq_w] * 3)
        self.trainable["predictor"] = HyperPredictor(eq_w, 4)

    def two_views(
        self, raw: torch.Tensor, data: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = raw_to_float(raw)
        base = random_resized_crop(x, x.shape[-1], scale=(0.2, 1.0))
        kx = torch.randint(0, 4, (x.shape[0],)).to(x.device)
        ky = torch.randint(0, 4, (x.shape[0],)).to(x.device)
        views = []
        for k in (kx, ky):
            v = grayscale(color_jitter(base, 0.4, 0.4, 0.2, 0.1, p=0.8), 0.2)
            views.append(normalize_images(rotate90(v, k), data))
        return views[0], views[1], rotation_parameters((ky - kx) % 4)

    def embed(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = pooled_features(model, x)
        return (
            self.trainable["expander_inv"](h[:, : self.split]),
            self.trainable["expander_equi"](h[:, self.split :]),
        )

    def step(self, batch: Any, state: Any) -> dict[str, Any]:
        vx, vy, t = self.two_views(batch.raw, state.data)
        inv_x, eq_x = self.embed(state.model, vx)
        inv_y, eq_y = self.embed(state.model, vy)
        pred = self.trainable["predictor"](eq_x.float(), t)
        out = sie_loss(inv_x.float(), inv_y.float(), eq_x.float(), eq_y.float(), pred, **self.coefs)
        return {k: (v if k == "loss" else v.detach()) for k, v in out.items()}

    def eval_step(self, batch: Any, state: Any) -> dict[str, float]:
        return {k: float(v) for k, v in self.step(batch, state).items()}
