"""The MetaFormer block: norm -> token mixer -> residual, norm -> MLP -> residual.

From *MetaFormer Is Actually What You Need for Vision* and *MetaFormer Baselines for
Vision*: the block is fixed and the token mixer is passed in, so a whole family is a
table of mixer names. Works on NCHW tensors like every spatial block here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from .drop import DropPath, LayerScale2d
from .mixers import create_mixer
from .mlp import ConvMlp
from .norm import create_norm

__all__ = ["MetaFormerBlock"]


class _ResScale(nn.Module):
    """Learnable per-channel scale on the residual path (MetaFormer Baselines' res scale)."""

    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(init_value * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.view(1, -1, 1, 1)


class MetaFormerBlock(nn.Module):
    def __init__(
        self,
        dim: int,
        token_mixer: str | Callable[..., nn.Module] = "pooling",
        mixer_kwargs: dict | None = None,
        input_size: tuple[int, int] | None = None,
        mlp_ratio: float = 4.0,
        mlp_act: str = "star_relu",
        mlp_bias: bool = False,
        norm: str | Callable[[int], nn.Module] = "layernorm2d_nobias",
        drop: float = 0.0,
        drop_path: float = 0.0,
        layer_scale_init: float | None = None,
        res_scale_init: float | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = create_norm(norm, dim)
        self.token_mixer = create_mixer(
            token_mixer, dim, input_size=input_size, **(mixer_kwargs or {})
        )
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.layer_scale1 = (
            LayerScale2d(dim, layer_scale_init) if layer_scale_init else nn.Identity()
        )
        self.res_scale1 = _ResScale(dim, res_scale_init) if res_scale_init else nn.Identity()
        self.norm2 = create_norm(norm, dim)
        self.mlp = ConvMlp(dim, int(mlp_ratio * dim), act=mlp_act, bias=mlp_bias, drop=drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.layer_scale2 = (
            LayerScale2d(dim, layer_scale_init) if layer_scale_init else nn.Identity()
        )
        self.res_scale2 = _ResScale(dim, res_scale_init) if res_scale_init else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.res_scale1(x) + self.layer_scale1(self.drop_path1(self.token_mixer(self.norm1(x))))
        return self.res_scale2(x) + self.layer_scale2(self.drop_path2(self.mlp(self.norm2(x))))
