"""Token mixers: the part of a MetaFormer block that exchanges information between tokens.

Contract shared by every mixer:

- constructor ``Mixer(dim, **options)``; a mixer whose weights depend on the token grid
  also takes ``input_size=(H, W)`` and ``create_mixer`` passes it when accepted;
- ``forward(x)`` maps an NCHW tensor (B, C, H, W) to a tensor of the same shape.

Mixers register under a short name so that a MetaFormer family is a table of names.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
import torch.nn as nn

from .act import create_act
from .attention import Attention

__all__ = [
    "MIXERS",
    "AttentionMixer",
    "IdentityMixer",
    "PoolingMixer",
    "RandomMixer",
    "SepConvMixer",
    "create_mixer",
    "register_mixer",
]

MIXERS: dict[str, Callable[..., nn.Module]] = {}


def register_mixer(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        if name in MIXERS:
            raise ValueError(f"token mixer {name!r} is registered twice")
        MIXERS[name] = cls
        return cls

    return decorator


def create_mixer(
    name: str | Callable[..., nn.Module],
    dim: int,
    input_size: tuple[int, int] | None = None,
    **kwargs,
) -> nn.Module:
    """Build a token mixer by name or from a callable, passing ``input_size`` if it takes one."""
    if isinstance(name, str):
        if name not in MIXERS:
            raise ValueError(f"unknown token mixer {name!r}; choose one of {sorted(MIXERS)}")
        factory = MIXERS[name]
    else:
        factory = name
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        params = {}
    if "input_size" in params:
        kwargs["input_size"] = input_size
    return factory(dim, **kwargs)


@register_mixer("identity")
class IdentityMixer(nn.Module):
    """No token mixing at all (IdentityFormer, MetaFormer Baselines for Vision)."""

    def __init__(self, dim: int) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@register_mixer("pooling")
class PoolingMixer(nn.Module):
    """Average pooling minus the input (PoolFormer, MetaFormer Is Actually What You Need)."""

    def __init__(self, dim: int, pool_size: int = 3) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(
            pool_size, stride=1, padding=pool_size // 2, count_include_pad=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x) - x


@register_mixer("random")
class RandomMixer(nn.Module):
    """A frozen random token-mixing matrix (RandFormer, MetaFormer Baselines for Vision).

    The matrix is softmax-normalised random numbers, kept as a non-trainable parameter so
    that it is saved with the weights; it needs the token grid at construction.
    """

    def __init__(self, dim: int, input_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        if input_size is None:
            raise ValueError("RandomMixer needs input_size=(H, W): its matrix is per token")
        n = input_size[0] * input_size[1]
        self.input_size = tuple(input_size)
        self.matrix = nn.Parameter(torch.softmax(torch.rand(n, n), dim=-1), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if (h, w) != self.input_size:
            raise ValueError(f"RandomMixer was built for a {self.input_size} grid, got {(h, w)}")
        return torch.einsum("mn,bcn->bcm", self.matrix, x.flatten(2)).reshape(b, c, h, w)


@register_mixer("sepconv")
class SepConvMixer(nn.Module):
    """Inverted separable convolution: pw expand, act, depthwise kxk, pw project (ConvFormer)."""

    def __init__(
        self,
        dim: int,
        expansion_ratio: float = 2.0,
        kernel_size: int = 7,
        act1: str = "star_relu",
        act2: str = "identity",
        bias: bool = False,
    ) -> None:
        super().__init__()
        mid = int(expansion_ratio * dim)
        self.pwconv1 = nn.Conv2d(dim, mid, 1, bias=bias)
        self.act1 = create_act(act1)
        self.dwconv = nn.Conv2d(
            mid, mid, kernel_size, padding=kernel_size // 2, groups=mid, bias=bias
        )
        self.act2 = create_act(act2)
        self.pwconv2 = nn.Conv2d(mid, dim, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pwconv2(self.act2(self.dwconv(self.act1(self.pwconv1(x)))))


@register_mixer("attention")
class AttentionMixer(nn.Module):
    """Global multi-head self-attention over all H*W tokens (CAFormer's attention stages)."""

    def __init__(
        self, dim: int, head_dim: int = 32, qkv_bias: bool = False, proj_bias: bool = False
    ) -> None:
        super().__init__()
        num_heads = max(dim // head_dim, 1)
        self.attn = Attention(
            dim, num_heads, head_dim=head_dim, qkv_bias=qkv_bias, proj_bias=proj_bias
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = self.attn(x.flatten(2).transpose(1, 2))
        return t.transpose(1, 2).reshape(b, c, h, w)
