"""Linear layers with int8 weights and int8 activations quantized at run time (CPU inference).

:class:`DynamicInt8Linear` stands in for an ``nn.Linear`` at inference:

- **weights** are quantized once, symmetrically and per output channel:
  ``s_o = max_i |W[o, i]| / 127`` and ``Q[o, i] = round(W[o, i] / s_o)`` in ``[-127, 127]``;
- **activations** are quantized on every call, per tensor, to unsigned 8 bits with a scale
  and zero point taken from the batch's own minimum and maximum (so nothing is
  calibrated in advance), multiplied in int8 with 32-bit accumulation, and the result is
  rescaled to float32 with the float32 bias added.

With ``reduce_range`` the activations use 7 bits: on a CPU without the VNNI int8
dot-product instructions (AVX2 only) the kernel adds pairs of u8 x s8 products in 16-bit
registers, which can saturate with 8-bit activations; 7 bits cannot. It is on by default
exactly when the CPU has no VNNI.

The kernel is PyTorch's own dynamic quantized linear operator
(``torch.ops.quantized.linear_dynamic`` on a weight packed by
``torch.ops.quantized.linear_prepack``; FBGEMM's int8 GEMM on x86), called directly. Two
other routes were measured and rejected: on an AMD EPYC with AVX512-VNNI, torchao's
``Int8DynamicActivationInt8WeightConfig`` ran its eager path at about 1.0x the float32
time of a 1576x384 by 384x1536 product, where the operator here ran it 2.3-3.9x faster
than float32; on an AVX2-only EPYC, torchao's PT2E int8 lowering (``archbench.compress``'s
``pt2e_int8``) ran vit_small at 0.31-0.36x float32 speed. ``torch.ao``'s
``quantize_dynamic`` module swap, which calls the same operator, is deprecated, so the
module is archbench's own. PyTorch has also announced that its quantized tensor types
(which the packing step uses) will go in a future release; :func:`int8_linear_available`
then reports the kernel missing and ``optimize(..., int8_linear=True)`` refuses with that
reason. Their deprecation warning is silenced at the one call that needs them.

The layer is for inference only: it refuses inputs that need a gradient rather than
returning an output that silently drops it.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import torch
import torch.nn as nn

__all__ = ["DynamicInt8Linear", "int8_linear_available", "quantize_weight_per_channel"]


@functools.cache
def int8_linear_available() -> tuple[bool, str]:
    """Whether this PyTorch build has an x86 int8 linear kernel (FBGEMM), and why not."""
    engines = torch.backends.quantized.supported_engines
    if "fbgemm" not in engines and "x86" not in engines:
        return False, f"this PyTorch build has no x86 int8 engine (it has {engines})"
    if torch.backends.quantized.engine not in ("x86", "fbgemm"):
        return False, (
            f"the quantized engine is {torch.backends.quantized.engine!r}; set "
            "torch.backends.quantized.engine = 'x86'"
        )
    try:  # a 1x1 layer through the whole path: packing, the kernel
        packed = _prepack(torch.ones(1, 1, dtype=torch.int8), torch.ones(1), None)
        torch.ops.quantized.linear_dynamic(torch.ones(1, 1), packed, True)
    except (AttributeError, RuntimeError, NotImplementedError) as err:
        return False, f"this PyTorch build cannot run quantized::linear_dynamic ({err})"
    return True, ""


def _prepack(codes: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> Any:
    """The kernel's packed weight from int8 codes and per-channel scales."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        q = torch._make_per_channel_quantized_tensor(
            codes, scale.double(), torch.zeros(codes.shape[0], dtype=torch.long), 0
        )
    return torch.ops.quantized.linear_prepack(q, bias)


def quantize_weight_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8 quantization of a 2-d weight.

    Returns ``(q, scale)`` with ``q`` int8 in ``[-127, 127]`` and ``scale`` float32 of
    shape ``(out,)`` such that ``q * scale[:, None]`` approximates ``weight`` within half a
    step per channel. A channel of zeros gets scale 1 (its codes are all zero).
    """
    if weight.ndim != 2:
        raise ValueError(f"expected a 2-d weight (out, in), got shape {tuple(weight.shape)}")
    w = weight.detach().float()
    if not torch.isfinite(w).all():
        raise ValueError("the weight contains NaN or inf; it cannot be quantized")
    amax = w.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def _default_reduce_range() -> bool:
    from ..compress.quantize import cpu_has_vnni

    return not cpu_has_vnni()


class DynamicInt8Linear(nn.Module):
    """``y = dequant(quant(x) @ Q^T) + b``: int8 weights per output channel, activations
    quantized per call (see the module docstring). Build with :meth:`from_linear`.

    The state dict holds ``weight_int8`` (int8, ``(out, in)``), ``weight_scale``
    (float32, ``(out,)``) and ``bias``; the packed kernel weight is rebuilt from them
    after loading, copying or unpickling.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        reduce_range: bool | None = None,
    ) -> None:
        super().__init__()
        ok, why = int8_linear_available()
        if not ok:
            raise RuntimeError(f"DynamicInt8Linear is not available: {why}")
        self.in_features, self.out_features = in_features, out_features
        self.reduce_range = _default_reduce_range() if reduce_range is None else bool(reduce_range)
        self.register_buffer(
            "weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8)
        )
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self._packed: Any = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, reduce_range: bool | None = None) -> DynamicInt8Linear:
        """The int8 version of a float ``nn.Linear`` (its weights quantized per channel)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"expected an nn.Linear, got {type(linear).__name__}")
        if linear.weight.device.type != "cpu":
            raise ValueError(
                f"int8 linear layers run on the CPU; this one is on {linear.weight.device}"
            )
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, reduce_range)
        q, scale = quantize_weight_per_channel(linear.weight)
        layer.weight_int8.copy_(q)
        layer.weight_scale.copy_(scale)
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach().float())
        return layer

    @property
    def weight(self) -> torch.Tensor:
        """The float32 weight the int8 codes stand for, ``Q * s[:, None]``: a computed
        copy (code that reads a linear layer's ``weight.dtype`` or ``.device`` keeps
        working; writing to it changes nothing)."""
        return self.weight_int8.float() * self.weight_scale[:, None]

    def _pack(self) -> Any:
        bias = None if self.bias is None else self.bias.float().contiguous()
        self._packed = _prepack(self.weight_int8, self.weight_scale, bias)
        return self._packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad and torch.is_grad_enabled():
            raise RuntimeError(
                "DynamicInt8Linear is for inference: its int8 kernel has no backward; "
                "run it under torch.no_grad() or torch.inference_mode()"
            )
        if x.dtype != torch.float32 or x.device.type != "cpu":
            raise TypeError(
                f"DynamicInt8Linear takes float32 CPU input, got {x.dtype} on {x.device}"
            )
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"DynamicInt8Linear expects {self.in_features} input features, "
                f"got input of shape {tuple(x.shape)}"
            )
        packed = self._packed if self._packed is not None else self._pack()
        return torch.ops.quantized.linear_dynamic(x, packed, self.reduce_range)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._packed = None  # repacked from the loaded codes on the next call

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_packed"] = None  # copies and pickles repack from the buffers
        return state

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, reduce_range={self.reduce_range}"
        )
