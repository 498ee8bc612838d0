"""Structural reparameterization helpers.

Train-time multi-branch blocks (RepVGG, *MobileOne*, *UniRepLKNet*'s dilated reparam
block, *Non-deep Networks*) are linear in eval mode, so their branches collapse into one
convolution. These helpers do the arithmetic on weight tensors:

- :func:`fuse_conv_bn` folds a BatchNorm (eval statistics) into the convolution before it;
- :func:`identity_kernel` writes the identity map as a (grouped) convolution kernel;
- :func:`pad_kernel` centres a small kernel inside a larger one;
- :func:`dilated_to_dense` turns a dilated kernel into the dense kernel it is equivalent to;
- :func:`reparameterize_model` calls ``reparameterize()`` on every module that has one.

Kernels use PyTorch's layout ``(out, in / groups, kh, kw)``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "dilated_to_dense",
    "fuse_conv_bn",
    "identity_kernel",
    "pad_kernel",
    "reparameterize_model",
]


def fuse_conv_bn(
    weight: torch.Tensor | None,
    bn: nn.BatchNorm2d,
    conv_bias: torch.Tensor | None = None,
    identity_groups: int = 1,
    identity_size: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold ``bn`` (running statistics) into the convolution ``weight`` before it.

    ``weight=None`` means the branch is BatchNorm alone (an identity convolution): a
    ``identity_size`` x ``identity_size`` identity kernel with ``identity_groups`` groups
    is used. Returns the fused kernel and bias.
    """
    if not isinstance(bn, nn.BatchNorm2d):
        raise TypeError(f"fuse_conv_bn needs an nn.BatchNorm2d, got {type(bn).__name__}")
    if weight is None:
        weight = identity_kernel(bn.num_features, identity_size, identity_groups).to(
            bn.running_mean
        )
    std = (bn.running_var + bn.eps).sqrt()
    gamma = bn.weight if bn.weight is not None else torch.ones_like(std)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(std)
    scale = gamma / std
    bias = beta - bn.running_mean * scale
    if conv_bias is not None:
        bias = bias + conv_bias * scale
    return weight * scale.reshape(-1, 1, 1, 1), bias


def identity_kernel(channels: int, kernel_size: int = 1, groups: int = 1) -> torch.Tensor:
    """A ``(channels, channels / groups, k, k)`` kernel whose convolution is the identity."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"identity kernel needs an odd kernel_size >= 1, got {kernel_size}")
    if channels % groups:
        raise ValueError(f"channels ({channels}) must be divisible by groups ({groups})")
    per_group = channels // groups
    kernel = torch.zeros(channels, per_group, kernel_size, kernel_size)
    centre = kernel_size // 2
    idx = torch.arange(channels)
    kernel[idx, idx % per_group, centre, centre] = 1.0
    return kernel


def pad_kernel(kernel: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Zero-pad a kernel symmetrically to ``size`` (both differences must be even)."""
    th, tw = (size, size) if isinstance(size, int) else size
    kh, kw = kernel.shape[-2:]
    dh, dw = th - kh, tw - kw
    if dh < 0 or dw < 0 or dh % 2 or dw % 2:
        raise ValueError(
            f"cannot centre a {kh}x{kw} kernel in {th}x{tw}: the target must be at least as "
            "large and differ by an even number in each dimension"
        )
    return F.pad(kernel, (dw // 2, dw // 2, dh // 2, dh // 2))


def dilated_to_dense(kernel: torch.Tensor, dilation: int) -> torch.Tensor:
    """The dense kernel of size ``(k - 1) * dilation + 1`` equal to ``kernel`` dilated.

    Taps are spread ``dilation`` apart with zeros between them (a transposed convolution
    of the kernel with a unit impulse at stride ``dilation``).
    """
    if dilation < 1:
        raise ValueError(f"dilation must be >= 1, got {dilation}")
    if dilation == 1:
        return kernel
    kh, kw = kernel.shape[-2:]
    dense = kernel.new_zeros(*kernel.shape[:-2], (kh - 1) * dilation + 1, (kw - 1) * dilation + 1)
    dense[..., ::dilation, ::dilation] = kernel
    return dense


@torch.no_grad()
def reparameterize_model(model: nn.Module) -> nn.Module:
    """Fuse every train-time branch in ``model`` (in place) and return it in eval mode.

    Calls ``reparameterize()`` on each submodule that defines one, innermost first,
    so that a block may fuse its own children before itself.
    """
    model.eval()
    modules = list(model.modules())
    for m in reversed(modules):
        if m is not model and hasattr(m, "reparameterize"):
            m.reparameterize()
    return model
