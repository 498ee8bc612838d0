"""Context clustering token mixer (*Image as Set of Points*, Ma et al., ICLR 2023).

Each point (pixel) has a feature; per head, points are projected to a similarity space
(``f``) and a value space (``v``). Optionally the map is folded into ``fold x fold``
regions; in each region ``proposal x proposal`` centres are proposed by average pooling.
Every point joins its most similar centre (cosine similarity, ``sigmoid(alpha * cos +
beta)``); each cluster aggregates ``(v_centre + sum_i s_i v_i) / (1 + sum_i s_i)`` and
dispatches the result back to its members scaled by their similarity; a 1x1 conv
projects the heads back to ``dim``. NCHW in and out.

The aggregation divides by one plus the sum of the members' similarities, as both the
paper's Eq. 1 and the official code do (not by the number of members).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .mixers import register_mixer

__all__ = ["ContextCluster"]


@register_mixer("context_cluster")
class ContextCluster(nn.Module):
    def __init__(
        self,
        dim: int,
        heads: int = 4,
        head_dim: int = 24,
        proposal: int = 2,
        fold: int = 1,
    ) -> None:
        super().__init__()
        if heads < 1 or head_dim < 1 or proposal < 1 or fold < 1:
            raise ValueError(
                f"heads, head_dim, proposal and fold must be >= 1; got {heads}, {head_dim}, "
                f"{proposal}, {fold}"
            )
        self.heads, self.head_dim = heads, head_dim
        self.proposal, self.fold = proposal, fold
        self.f = nn.Conv2d(dim, heads * head_dim, 1)
        self.v = nn.Conv2d(dim, heads * head_dim, 1)
        self.proj = nn.Conv2d(heads * head_dim, dim, 1)
        self.sim_alpha = nn.Parameter(torch.ones(1))
        self.sim_beta = nn.Parameter(torch.zeros(1))

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        """(B, E*c, H, W) -> (B*E*f*f, c, H/f, W/f): heads and regions become batch items."""
        b, _, h, w = t.shape
        f, e = self.fold, self.heads
        t = t.reshape(b * e, self.head_dim, f, h // f, f, w // f)
        return t.permute(0, 2, 4, 1, 3, 5).reshape(b * e * f * f, self.head_dim, h // f, w // f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        f = self.fold
        if h % f or w % f:
            raise ValueError(
                f"ContextCluster: the {h}x{w} map cannot be folded into {f}x{f} regions"
            )
        feat, value = self._split(self.f(x)), self._split(self.v(x))
        centres = F.adaptive_avg_pool2d(feat, self.proposal).flatten(2).transpose(1, 2)  # (n, M, c)
        v_centres = F.adaptive_avg_pool2d(value, self.proposal).flatten(2).transpose(1, 2)
        points = feat.flatten(2).transpose(1, 2)  # (n, N, c)
        vals = value.flatten(2).transpose(1, 2)
        cos = F.normalize(centres, dim=-1) @ F.normalize(points, dim=-1).transpose(1, 2)
        sim = torch.sigmoid(self.sim_beta + self.sim_alpha * cos)  # (n, M, N)
        # each point belongs to exactly one centre: its most similar one
        assign = F.one_hot(sim.argmax(dim=1), sim.shape[1]).transpose(1, 2).to(sim.dtype)
        sim = sim * assign
        agg = (sim @ vals + v_centres) / (sim.sum(-1, keepdim=True) + 1.0)  # (n, M, c)
        out = sim.transpose(1, 2) @ agg  # dispatch: (n, N, c)
        hh, ww = h // f, w // f
        out = out.transpose(1, 2).reshape(b * self.heads, f, f, self.head_dim, hh, ww)
        out = out.permute(0, 3, 1, 4, 2, 5).reshape(b, self.heads * self.head_dim, h, w)
        return self.proj(out)
