"""Training ``nn.Linear`` layers through oneDNN on the CPU: forward and both backward products.

PyTorch's float32 ``F.linear`` and ``mm`` on CPU run the BLAS library's GEMM (MKL in the
x86 wheels). On an AMD EPYC with AVX512, MKL runs its AVX2 code there (about 100 GFLOP/s
on one core), while oneDNN's inner product, ``torch.ops.mkldnn._linear_pointwise`` (the op
:class:`~archbench.layers.packed_linear.PackedLinear` uses for inference), uses AVX512:
at vit_pico's shapes, (4160, 128) rows by a (384, 128) weight, 1.8 ms against 4.2 (one
thread). vit_pico's and mixer_pico's training steps at 32x32 spend 65-77% of their time
in these products. :func:`onednn_linear` runs all three of a linear layer's products on
oneDNN: the forward ``x W^T + b``, the input gradient ``g W`` (an inner product with the
transposed weight) and the weight gradient ``g^T x`` (an inner product of the transposed
output gradient with the transposed input, both copied contiguous); the bias gradient is
a sum. Values and gradients equal ``F.linear``'s to float32 rounding (another order of
summation), not bit for bit.

:func:`onednn_linears` switches the plain ``nn.Linear`` modules of a model to
:class:`OneDNNLinear` for a block (same parameters, names and state dict; the class is put
back on exit); a training recipe turns it on with ``onednn_linear: true``. Whether it is
faster depends on the CPU: where MKL already uses the CPU's widest vectors the two are
close, so it is opt-in.

Written here because no maintained library exposes oneDNN's inner product with a backward
for eager training (``torch.compile`` does not use it for training graphs).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .packed_linear import onednn_linear_available

__all__ = ["OneDNNLinear", "onednn_linear", "onednn_linears"]


def _inner(x2d: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x2d @ weight^T (+ bias)`` by oneDNN; both operands contiguous float32 on the CPU."""
    return torch.ops.mkldnn._linear_pointwise(x2d, weight, bias, "none", [], "")


class _OneDNNLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):  # type: ignore[override]
        x2d = x.reshape(-1, x.shape[-1])
        if not x2d.is_contiguous():
            x2d = x2d.contiguous()
        w = weight if weight.is_contiguous() else weight.contiguous()
        ctx.save_for_backward(x2d, w)
        ctx.has_bias = bias is not None
        ctx.in_shape = x.shape
        return _inner(x2d, w, bias).view(*x.shape[:-1], w.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        x2d, w = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        g = grad.reshape(-1, grad.shape[-1])
        if not g.is_contiguous():
            g = g.contiguous()
        gx = gw = gb = None
        if need_x:  # g W = g (W^T)^T
            gx = _inner(g, w.t().contiguous(), None).view(ctx.in_shape)
        if need_w:  # g^T x = (g^T) (x^T)^T
            gw = _inner(g.t().contiguous(), x2d.t().contiguous(), None)
        if need_b and ctx.has_bias:
            gb = g.sum(0)
        return gx, gw, gb


def _applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    if torch.compiler.is_compiling():  # the compiler picks its own kernels (and Inductor
        return False  # cannot lower this function's backward)
    if x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32:
        return False
    if x.dim() < 2 or x.numel() == 0 or torch.is_autocast_enabled("cpu"):
        return False
    return onednn_linear_available()[0]


def onednn_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` with its forward and backward products on oneDNN
    (float32 on the CPU, inputs of two or more dimensions, outside ``torch.compile``);
    anything else is ``F.linear``. Double backward is refused (``once_differentiable``)."""
    if not _applies(x, weight):
        return F.linear(x, weight, bias)
    return _OneDNNLinearFunction.apply(x, weight, bias)


class OneDNNLinear(nn.Linear):
    """An ``nn.Linear`` whose forward is :func:`onednn_linear` (same parameters and state
    dict; other devices and dtypes take ``F.linear``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return onednn_linear(x, self.weight, self.bias)


@contextmanager
def onednn_linears(model: nn.Module, enabled: bool = True) -> Iterator[int]:
    """Within the block, every module of ``model`` whose class is exactly ``nn.Linear``
    runs as :class:`OneDNNLinear`; yields how many were switched (0 when ``enabled`` is
    false or this torch build lacks the op) and puts their class back on exit."""
    switched: list[nn.Module] = []
    if enabled and onednn_linear_available()[0]:
        for m in model.modules():
            if type(m) is nn.Linear:
                m.__class__ = OneDNNLinear
                switched.append(m)
    try:
        yield len(switched)
    finally:
        for m in switched:
            m.__class__ = nn.Linear
