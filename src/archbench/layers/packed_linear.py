"""``nn.Linear`` through oneDNN with a pre-packed weight, for CPU inference.

PyTorch's eager ``F.linear`` on CPU is an ``addmm``: the bias is first copied into the
whole output and the GEMM then accumulates into it, and an activation after it is one
more pass over the output. oneDNN's inner-product primitive takes the weight re-ordered
once into its blocked layout and applies the bias (and GELU) in the GEMM's epilogue. This
is the kernel ``torch.compile`` with Inductor freezing picks for a linear layer on CPU;
:class:`PackedLinear` calls it from eager mode (``torch.ops.mkldnn._linear_pointwise``,
the op those compiled graphs call), so a model keeps its class, methods and hooks.

Whether it is faster depends on the shapes, the CPU and how busy its cores are (on a
2-core AVX2 EPYC, oneDNN ran ViT-S/16's block layers at 0.72-0.97x MKL's speed on idle
cores and at 1.3-2.6x while other jobs shared them; classifier heads gained 1.2-1.5x),
which is why ``archbench.optimize`` times both per layer shape before choosing.

Written here because no maintained library exposes this kernel as an eager module.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["PackedLinear", "onednn_linear_available"]

_ACTS = ("none", "gelu", "gelu_tanh")


def onednn_linear_available() -> tuple[bool, str]:
    """(available, reason): whether this torch build has the oneDNN packed linear op."""
    if not torch.backends.mkldnn.is_available():
        return False, "this torch build has no oneDNN (mkldnn) support"
    ops = torch.ops.mkldnn
    if not (hasattr(ops, "_linear_pointwise") and hasattr(ops, "_reorder_linear_weight")):
        return False, "this torch build lacks torch.ops.mkldnn._linear_pointwise"
    return True, ""


def _check_act(act: str) -> str:
    if act not in _ACTS:
        raise ValueError(f"act must be one of {_ACTS}, got {act!r}")
    return act


class PackedLinear(nn.Linear):
    """An ``nn.Linear`` (same parameters, state dict and hooks) that runs float32 CPU
    inference through oneDNN with its weight packed once, optionally with GELU fused.

    ``act`` is ``"none"``, ``"gelu"`` (exact) or ``"gelu_tanh"``: the module then computes
    ``gelu(x @ W^T + b)``. The packed weight is built on the first call (for that call's
    number of rows) and rebuilt when the weight changes; it is not part of the state dict
    and is dropped by ``copy.deepcopy`` and pickling. Any call that needs autograd, or a
    tensor that is not float32 on the CPU, takes the plain ``F.linear`` path, and so does
    a call traced by ``torch.compile``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, act: str = "none"):
        super().__init__(in_features, out_features, bias=bias)
        self.act = _check_act(act)
        self._packed: tuple[Any, torch.Tensor] | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, act: str = "none") -> PackedLinear:
        """A PackedLinear sharing ``linear``'s weight and bias Parameters (no copy)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"from_linear needs an nn.Linear, got {type(linear).__name__}")
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = linear.in_features, linear.out_features
        new.weight = linear.weight
        new.bias = linear.bias
        new.act = _check_act(act)
        new._packed = None
        new._forward_hooks.update(linear._forward_hooks)
        new._forward_pre_hooks.update(linear._forward_pre_hooks)
        return new

    def _plain(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        if self.act == "gelu":
            return F.gelu(y)
        if self.act == "gelu_tanh":
            return F.gelu(y, approximate="tanh")
        return y

    def _can_pack(self, x: torch.Tensor) -> bool:
        # under torch.compile the packed weight would be a graph input, which Inductor's
        # lowering of the oneDNN kernel refuses (it packs constant weights itself when
        # freezing): the compiler gets the plain linear layer
        if torch.compiler.is_compiling():
            return False
        w = self.weight
        if x.device.type != "cpu" or w.device.type != "cpu" or x.dim() < 2:
            return False
        if x.dtype != torch.float32 or w.dtype != torch.float32:
            return False
        return not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))

    def _packed_weight(self, rows: int) -> torch.Tensor:
        key = (self.weight.data_ptr(), self.weight._version)
        if self._packed is None or self._packed[0] != key:
            packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), rows)
            self._packed = (key, packed)
        return self._packed[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._can_pack(x):
            return self._plain(x)
        rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
        if rows == 0:
            return self._plain(x)
        packed = self._packed_weight(rows)
        bias = None if self.bias is None else self.bias.detach()
        if self.act == "none":
            return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
        algorithm = "tanh" if self.act == "gelu_tanh" else "none"
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "gelu", [], algorithm)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_packed"] = None  # an opaque oneDNN tensor: neither copyable nor picklable
        return state

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, act={self.act}, kernel=onednn"
