"""Selfie: *Selfie: Self-supervised Pretraining for Image Embedding* (Trinh, Luong and Le,
2019).

BERT's masked modeling for images, with a classification loss instead of pixel
regression. The image is cut into a ``grid x grid`` array of patches; ``masked`` of them
(chosen per image) are hidden. The patch processing network (the backbone) encodes every
patch on its own into its pooled feature ``h``. The attention pooling network (pre-norm
transformer blocks) reads the visible patches' features, each plus the learned embedding
of its position, together with a learned query token ``u``, and returns ``u``'s output:
a summary of the visible image. For each masked position ``i`` the query is
``v_i = u + pos_i``, and the logits over the image's masked patches (the true one and the
others as distractors, all from the same image) are the dot products ``v_i . h_j``; the
loss is the cross-entropy of picking the true patch (Contrastive Predictive Coding's loss).

Where archbench differs: the paper's patch network is the first three ResNet-50 stages;
here it is the whole registered backbone (patches are resized to its input size when it
cannot take them as they are), so any family pretrains this way. The paper does not fix
how many of the 16 patches of a 32x32 image are masked in a form usable here; the default
masks 4 of them (a quarter). The attention pooling network is ``depth`` blocks of the
backbone's feature width (the paper uses the first ResNet-50 block's width, 3 layers).
Positions are added to the visible patches' features so the pooling network knows the
layout. Fine-tuning reuses the backbone alone, as the paper's does with the patch network.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import TransformerBlock
from ..train import register_task
from ._pretext import normalize_images, pooled_features, raw_to_float, simple_view
from .base import SSLTask

__all__ = ["AttentionPooling", "Selfie", "patch_grid", "selfie_logits", "split_masked"]


def patch_grid(images: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, grid * grid, C, H / grid, W / grid), patches in row-major order."""
    b, c, h, w = images.shape
    if h % grid or w % grid:
        raise ValueError(f"selfie: a {grid}x{grid} grid does not tile {h}x{w} images")
    ph, pw = h // grid, w // grid
    x = images.reshape(b, c, grid, ph, grid, pw).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, grid * grid, c, ph, pw)


def split_masked(
    batch: int, patches: int, masked: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked positions (B, masked), visible positions (B, patches - masked)), random
    per image, each sorted."""
    order = torch.rand(batch, patches, generator=generator).argsort(dim=1)
    return order[:, :masked].sort(dim=1).values, order[:, masked:].sort(dim=1).values


def selfie_logits(queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """(B, M, M): ``queries[b, i] . candidates[b, j]``, the score of patch ``j`` for the
    masked position ``i``; the true patch of position ``i`` is ``j = i``."""
    return torch.einsum("bid,bjd->bij", queries, candidates)


class AttentionPooling(nn.Module):
    """Selfie's attention pooling network: transformer blocks over ``[u, h_1 + p_1, ...]``,
    returning ``u``'s output, and the position embeddings for the queries."""

    def __init__(self, dim: int, positions: int, depth: int, heads: int) -> None:
        super().__init__()
        self.u = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.zeros(1, positions, dim))
        self.blocks = nn.Sequential(*[TransformerBlock(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        nn.init.trunc_normal_(self.u, std=0.02)
        nn.init.trunc_normal_(self.pos, std=0.02)

    def no_weight_decay(self) -> set[str]:
        return {"u", "pos"}

    def forward(
        self, visible: torch.Tensor, visible_pos: torch.Tensor, query_pos: torch.Tensor
    ) -> torch.Tensor:
        """``visible`` (B, V, D) features at positions ``visible_pos`` (B, V) -> queries
        (B, M, D) for the positions ``query_pos`` (B, M)."""
        b = visible.shape[0]
        pos = self.pos.expand(b, -1, -1)
        take = lambda idx: pos.gather(1, idx.unsqueeze(-1).expand(-1, -1, pos.shape[-1]))  # noqa: E731
        x = torch.cat([self.u.expand(b, -1, -1), visible + take(visible_pos)], dim=1)
        u = self.norm(self.blocks(x))[:, :1]
        return u + take(query_pos)


@register_task("selfie")
class Selfie(SSLTask):
    """Selfie: choose each masked patch among the image's masked patches."""

    views = 1

    def __init__(self, grid: int = 4, masked: int = 4, depth: int = 3, heads: int = 4) -> None:
        super().__init__()
        if grid < 2 or not 2 <= masked < grid * grid:
            raise ValueError(
                f"selfie: grid must be >= 2 and masked between 2 and grid^2 - 1 (a true patch "
                f"and at least one distractor, one visible patch); got grid={grid}, "
                f"masked={masked}"
            )
        if depth < 1 or heads < 1:
            raise ValueError(f"selfie: depth and heads must be >= 1, got {depth}, {heads}")
        self.grid, self.masked, self.depth, self.heads = grid, masked, depth, heads
        self.input_size = 0

    def setup(self, model: nn.Module, data: Any, recipe: Any) -> None:
        super().setup(model, data, recipe)
        if data.img_size % self.grid:
            raise ValueError(
                f"selfie: a {self.grid}x{self.grid} grid does not tile {data.img_size} px "
                "images; choose a grid that divides the image size"
            )
        dim = int(model.num_features)
        if dim % self.heads:
            raise ValueError(f"selfie: heads={self.heads} must divide the backbone's width {dim}")
        side = data.img_size // self.grid
        side_ok = getattr(model, "input_side_ok", None)
        self.input_size = side if not callable(side_ok) or side_ok(side) else data.img_size
        self.trainable["pooling"] = AttentionPooling(dim, self.grid**2, self.depth, self.heads)

    def loss(self, images: torch.Tensor, state: Any) -> dict[str, torch.Tensor]:
        b = images.shape[0]
        patches = patch_grid(images, self.grid)
        n = patches.shape[1]
        flat = patches.flatten(0, 1)
        if flat.shape[-1] != self.input_size:
            flat = F.interpolate(flat, size=self.input_size, mode="bilinear", align_corners=False)
        h = pooled_features(state.model, flat).float().view(b, n, -1)
        masked_pos, visible_pos = split_masked(b, n, self.masked)
        masked_pos, visible_pos = masked_pos.to(h.device), visible_pos.to(h.device)

        def gather(idx: torch.Tensor) -> torch.Tensor:
            return h.gather(1, idx.unsqueeze(-1).expand(-1, -1, h.shape[-1]))

        queries = self.trainable["pooling"](gather(visible_pos), visible_pos, masked_pos)
        logits = selfie_logits(queries.float(), gather(masked_pos))
        target = torch.arange(self.masked, device=h.device).expand(b, -1)
        loss = F.cross_entropy(logits.reshape(-1, self.masked), target.reshape(-1))
        acc = (logits.detach().argmax(-1) == target).float().mean()
        return {"loss": loss, "acc": acc}

    def step(self, batch: Any, state: Any) -> dict[str, Any]:
        x = simple_view(raw_to_float(batch.raw), scale=(0.35, 1.0))
        return self.loss(normalize_images(x, state.data), state)

    def eval_step(self, batch: Any, state: Any) -> dict[str, float]:
        return {k: float(v) for k, v in self.loss(batch.images, state).items()}
