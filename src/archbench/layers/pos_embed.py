"""Position embeddings: resampling a learned grid embedding to another token grid."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .helpers import to_2tuple

__all__ = ["resample_pos_embed"]


def resample_pos_embed(
    pos_embed: torch.Tensor,
    new_grid: int | tuple[int, int],
    old_grid: int | tuple[int, int] | None = None,
    num_prefix_tokens: int = 1,
    antialias: bool = True,
    mode: str = "bicubic",
) -> torch.Tensor:
    """Resize a (1, prefix + H*W, C) position embedding to ``new_grid`` (bicubic by default).

    The first ``num_prefix_tokens`` entries (class / distillation tokens) are kept as
    they are; the patch part is treated as a C-channel H x W image. ``old_grid`` defaults
    to the square grid implied by the token count.
    """
    if pos_embed.ndim != 3 or pos_embed.shape[0] != 1:
        raise ValueError(f"pos_embed must have shape (1, N, C), got {tuple(pos_embed.shape)}")
    prefix, patches = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    n, dim = patches.shape[1], patches.shape[2]
    if old_grid is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"{n} patch positions do not form a square grid; pass old_grid=(H, W)")
        old_grid = (side, side)
    old_grid, new_grid = to_2tuple(old_grid), to_2tuple(new_grid)
    if old_grid[0] * old_grid[1] != n:
        raise ValueError(f"old_grid {old_grid} does not hold the {n} patch positions")
    if old_grid == new_grid:
        return pos_embed
    grid = patches.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)
    grid = F.interpolate(
        grid.float(), size=new_grid, mode=mode, align_corners=False, antialias=antialias
    ).to(pos_embed.dtype)
    patches = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim)
    return torch.cat([prefix, patches], dim=1)
