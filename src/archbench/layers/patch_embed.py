"""Patch embedding: non-overlapping patches to tokens (ViT)."""

from __future__ import annotations

import torch
import torch.nn as nn

from .helpers import to_2tuple
from .norm import LayerNorm2d

__all__ = ["PatchEmbed"]


class PatchEmbed(nn.Module):
    """Split an image into ``patch_size`` patches and project each to ``embed_dim``.

    Returns (B, N, C) tokens when ``flatten`` else an NCHW grid. ``img_size`` must tile
    into whole patches; ``strict_size`` makes other input sizes an error.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int | tuple[int, int] = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        norm: bool = False,
        flatten: bool = True,
        bias: bool = True,
        strict_size: bool = True,
    ) -> None:
        super().__init__()
        self.img_size = to_2tuple(img_size)
        self.patch_size = to_2tuple(patch_size)
        for s, p in zip(self.img_size, self.patch_size):
            if p <= 0:
                raise ValueError(f"patch_size must be positive, got {self.patch_size}")
            if s <= 0 or s % p:
                lower = max(p, s // p * p)
                raise ValueError(
                    f"img_size {self.img_size} cannot be tiled by patch_size {self.patch_size}: "
                    f"each side must be a positive multiple of the patch side "
                    f"(nearest valid for {s}: {lower} or {lower + p})"
                )
        self.grid_size = (
            self.img_size[0] // self.patch_size[0],
            self.img_size[1] // self.patch_size[1],
        )
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.flatten = flatten
        self.strict_size = strict_size
        self.proj = nn.Conv2d(in_chans, embed_dim, self.patch_size, self.patch_size, bias=bias)
        # LayerNorm over channels: of the tokens, or of the NCHW map when not flattened
        norm_layer = nn.LayerNorm if flatten else LayerNorm2d
        self.norm = norm_layer(embed_dim, eps=1e-6) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if self.strict_size and (h, w) != self.img_size:
            raise ValueError(f"PatchEmbed was built for {self.img_size} inputs, got {(h, w)}")
        if h % self.patch_size[0] or w % self.patch_size[1]:
            raise ValueError(f"input {(h, w)} cannot be tiled by patch_size {self.patch_size}")
        x = self.proj(x)
        if self.flatten:
            return self.norm(x.flatten(2).transpose(1, 2))
        return self.norm(x)
