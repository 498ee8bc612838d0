"""Convolution helpers shared by the convolutional families: conv + norm + activation.

``ConvNormAct`` is the unit almost every CNN in archbench is built from (a 2-D
convolution without bias, a norm, an activation).
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from .act import create_act
from .helpers import to_2tuple
from .norm import create_norm

__all__ = ["ConvNormAct", "same_padding"]


def same_padding(kernel_size: int | tuple[int, int], dilation: int = 1) -> tuple[int, int]:
    """Padding that keeps the size of a stride-1 convolution with an odd kernel."""
    kh, kw = to_2tuple(kernel_size)
    return (dilation * (kh - 1)) // 2, (dilation * (kw - 1)) // 2


class ConvNormAct(nn.Sequential):
    """Conv2d (no bias when a norm follows), then a norm, then an activation.

    ``padding=None`` means "same" padding for odd kernels (``(k - 1) // 2`` per axis,
    times the dilation); pass an int or a pair for anything else, such as the
    unpadded ("valid") convolutions of Inception. ``norm=None`` or ``act=None`` leaves
    that part out. Submodules are named ``conv``, ``norm`` and ``act``. A named activation
    after a norm runs in place on the norm's output, so a hook on ``norm`` sees the
    activated values; hook the ``conv`` or the whole module instead. ``inplace_act``
    overrides that choice (``True`` without a norm: the activation then overwrites the
    convolution's output).
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int | tuple[int, int] = 3,
        stride: int = 1,
        padding: int | tuple[int, int] | None = None,
        dilation: int = 1,
        groups: int = 1,
        bias: bool | None = None,
        norm: str | Callable[[int], nn.Module] | None = "batchnorm",
        act: str | Callable[[], nn.Module] | None = "relu",
        norm_eps: float | None = None,
        inplace_act: bool | None = None,
    ) -> None:
        super().__init__()
        if in_chs <= 0 or out_chs <= 0:
            raise ValueError(f"channels must be positive, got in_chs={in_chs}, out_chs={out_chs}")
        if in_chs % groups or out_chs % groups:
            raise ValueError(f"groups={groups} must divide in_chs={in_chs} and out_chs={out_chs}")
        if padding is None:
            padding = same_padding(kernel_size, dilation)
        if bias is None:
            bias = norm is None
        self.conv = nn.Conv2d(
            in_chs, out_chs, kernel_size, stride, padding, dilation, groups, bias=bias
        )
        if norm is not None:
            self.norm = create_norm(norm, out_chs)
            if norm_eps is not None and hasattr(self.norm, "eps"):
                self.norm.eps = norm_eps
        if act is not None:
            # The norm's output is this module's own temporary: the activation overwrites
            # it (as timm does), saving one allocation per layer. Without a norm it would
            # overwrite the convolution's output, which hooks on ``conv`` may keep, so
            # that takes ``inplace_act=True``.
            inplace = norm is not None if inplace_act is None else inplace_act
            self.act = create_act(act, inplace=inplace)

    @property
    def out_channels(self) -> int:
        return self.conv.out_channels
