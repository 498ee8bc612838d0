"""Post-training int8 quantization with torchao's PT2E flow, for a real CPU speed-up.

The flow (torchao ``quantization.pt2e``): ``torch.export`` captures the model's ATen graph
(batch dimension dynamic), ``prepare_pt2e`` with the ``X86InductorQuantizer`` inserts
observers (weights per output channel, symmetric; activations per tensor, affine),
calibration batches run through it, ``convert_pt2e`` turns observers into quantize /
dequantize pairs with int8 weights. The graph is then lowered to oneDNN's int8
convolution and linear kernels, one of two ways:

- ``backend="lower"``: ``lower_pt2e_quantized_to_x86`` fuses the q/dq patterns into
  ``onednn.qconv``/``qlinear`` operators; no compiler needed;
- ``backend="compile"``: ``torch.compile`` with Inductor freezing, which does the same
  fusion and also generates C++ for the element-wise code in between (needs a C++
  compiler; compile time is not part of any timing).

``scheme="fake"`` stops after ``convert_pt2e``: the reference graph quantizes and
dequantizes in float arithmetic, so its accuracy is that of int8 but it runs no int8
kernel. Its result is marked ``simulated`` and its speed says nothing about int8.

A CPU without VNNI instructions (AVX2 only) multiplies u8 x s8 pairs in 16-bit
intermediates that can saturate; the quantizer's ``reduce_range`` (7-bit activations) is
turned on there, as torchao advises.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn

from .registry import CompressContext, CompressResult, register_compressor

__all__ = [
    "BACKENDS",
    "SCHEMES",
    "QuantizedModel",
    "check_scheme",
    "cpu_has_vnni",
    "quantize_pt2e",
]

SCHEMES = ("int8", "int8_dynamic", "fake")
BACKENDS = ("auto", "lower", "compile")


def cpu_has_vnni() -> bool:
    """Whether the CPU has the VNNI int8 dot-product instructions (AVX512-VNNI/AVX-VNNI)."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return False
    return "avx512_vnni" in text or "avx_vnni" in text or "amx_int8" in text


def check_scheme(scheme: str, backend: str = "auto") -> None:
    """Fail before any work when ``scheme`` has no kernel on this machine."""
    if scheme not in SCHEMES:
        raise ValueError(
            f"unknown quantization scheme {scheme!r}; choose one of {', '.join(SCHEMES)} "
            "(fake = simulated int8, no int8 kernel)"
        )
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if scheme == "fake":
        return
    engines = torch.backends.quantized.supported_engines
    has_kernel = "onednn" in engines or "x86" in engines
    if not has_kernel or not hasattr(torch.ops.onednn, "qconv_pointwise"):
        raise ValueError(
            f"scheme {scheme!r} needs oneDNN int8 kernels, which this torch build lacks "
            f"(quantized engines: {', '.join(engines) or 'none'}); use scheme=fake for "
            "simulated int8"
        )
    if torch.backends.mkldnn.is_available() is False:
        raise ValueError(
            f"scheme {scheme!r} needs oneDNN (mkldnn), which this torch build lacks; "
            "use scheme=fake for simulated int8"
        )


class QuantizedModel(nn.Module):
    """An int8 graph with the attributes measurement needs (``in_chans``, ``num_classes``)."""

    def __init__(
        self,
        graph: nn.Module,
        in_chans: int,
        num_classes: int,
        how: str,
        stored: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.graph = graph
        # the converted graph (plain int8 tensors) whose weights a file would hold; kept
        # outside the module tree
        self.__dict__["stored"] = stored
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.how = how

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x)

    def train(self, mode: bool = True) -> QuantizedModel:
        """An exported graph has no train mode; this only records the flag."""
        self.training = mode
        return self

    def weight_tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor the graph holds (int8 weights, scales, zero points, fp32 biases); for
        a lowered graph, those of the converted graph before lowering (oneDNN's packed
        weights are opaque tensors that cannot be stored)."""
        source = self.stored if self.stored is not None else self.graph
        graph = getattr(source, "graph", None)
        if isinstance(graph, torch.fx.Graph):  # only what the graph reads (not stale copies)
            used = {}
            for node in graph.nodes:
                if node.op == "get_attr":
                    value = _get_attr(source, str(node.target))
                    if isinstance(value, torch.Tensor) and value.layout == torch.strided:
                        if not value.is_mkldnn:
                            used[str(node.target)] = value.detach().contiguous()
            if used:
                return used
        out: dict[str, torch.Tensor] = {}
        seen: set[int] = set()
        for mod_name, m in source.named_modules():
            for key, value in list(vars(m).items()) + list(m._buffers.items()):
                if (
                    isinstance(value, torch.Tensor)
                    and value.layout == torch.strided
                    and not value.is_mkldnn
                    and id(value) not in seen
                ):
                    seen.add(id(value))
                    out[f"{mod_name}.{key}".lstrip(".")] = value.detach().contiguous()
            for key, p in m._parameters.items():
                if p is not None and id(p) not in seen:
                    seen.add(id(p))
                    out[f"{mod_name}.{key}".lstrip(".")] = p.detach().contiguous()
        return out


def _get_attr(module: nn.Module, target: str):
    for part in target.split("."):
        module = getattr(module, part)
    return module


def _export(model: nn.Module, example: torch.Tensor) -> tuple[nn.Module, bool]:
    """The exported graph module; batch dynamic when the model allows it."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    x2 = example.expand(2, *example.shape[1:]).contiguous()
    try:
        ep = torch.export.export(model, (x2,), dynamic_shapes=({0: batch},))
        return ep.module(), True
    except Exception:  # noqa: BLE001  (some graphs specialise the batch; export it static)
        return torch.export.export(model, (example,)).module(), False


def quantize_pt2e(
    model: nn.Module,
    example: torch.Tensor,
    calibration: list[torch.Tensor],
    scheme: str = "int8",
    backend: str = "auto",
) -> tuple[nn.Module, dict[str, Any]]:
    """(quantized model, facts): the PT2E flow on a copy of ``model`` in eval mode."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    check_scheme(scheme, backend)
    if scheme != "int8_dynamic" and not calibration:
        raise ValueError(f"scheme {scheme!r} needs calibration batches; pass --data")
    model = copy.deepcopy(model).eval()
    reduce_range = not cpu_has_vnni()
    with torch.no_grad():
        graph, dynamic = _export(model, example)
        quantizer = xiq.X86InductorQuantizer()
        quantizer.set_global(
            xiq.get_default_x86_inductor_quantization_config(
                is_dynamic=scheme == "int8_dynamic", reduce_range=reduce_range
            )
        )
        prepared = prepare_pt2e(graph, quantizer)
        for batch in calibration:
            prepared(batch if dynamic else batch[:1])
        converted = convert_pt2e(prepared)
    info: dict[str, Any] = {
        "scheme": scheme,
        "reduce_range": reduce_range,
        "dynamic_batch": dynamic,
        "calibration_batches": len(calibration),
    }
    if scheme == "fake":
        info["runs"] = "fake-quantized reference graph (float arithmetic)"
        return _wrap(model, converted, "fake"), info
    how = backend
    if backend in ("auto", "compile"):
        try:
            compiled = _compile(converted, example)
            info["runs"] = "int8 oneDNN kernels via torch.compile (Inductor, freezing)"
            return _wrap(model, compiled, "compile", converted), info
        except Exception as err:  # noqa: BLE001
            if backend == "compile":
                raise ValueError(
                    f"torch.compile of the int8 graph failed on this machine ({err}); "
                    "use backend=lower"
                ) from None
            info["compile_error"] = f"{type(err).__name__}: {str(err)[:200]}"
            how = "lower"
    with torch.no_grad():
        lowered = _lower_x86(converted, example, dynamic)
    info["runs"] = "int8 oneDNN kernels (torchao x86 lowering passes)"
    return _wrap(model, lowered, how, converted), info


def _lower_x86(graph: nn.Module, example: torch.Tensor, dynamic: bool) -> nn.Module:
    """torchao's x86 lowering (``lower_pt2e_quantized_to_x86``: re-export, decompose, fuse
    q/dq patterns into oneDNN int8 operators with its freezing passes, fold constants),
    keeping the batch dimension dynamic, which the packaged helper does not."""
    from torch._inductor.fx_passes.freezing_patterns import freezing_passes
    from torchao.quantization.pt2e.constant_fold import constant_fold
    from torchao.quantization.pt2e.inductor_passes import x86  # noqa: F401  (registers the int8 patterns)

    if not dynamic:
        from torchao.quantization.pt2e.lowering import lower_pt2e_quantized_to_x86

        return lower_pt2e_quantized_to_x86(graph, (example,))
    table = {
        k: v
        for k, v in torch.export.default_decompositions().items()
        if torch._export.utils._is_cia_op(k)
    }
    x2 = example.expand(2, *example.shape[1:]).contiguous()
    batch = torch.export.Dim("batch", min=1, max=4096)
    ep = torch.export.export(graph, (x2,), dynamic_shapes=({0: batch},), strict=True)
    lowered = ep.run_decompositions(table).module()
    aten = torch.ops.aten
    for node in list(lowered.graph.nodes):
        if node.target == aten.t.default:  # the fusion passes look for permute
            with lowered.graph.inserting_before(node):
                perm = lowered.graph.call_function(aten.permute.default, (node.args[0], [1, 0]))
            node.replace_all_uses_with(perm)
            lowered.graph.erase_node(node)
    lowered.recompile()
    freezing_passes(lowered, (x2,))
    constant_fold(lowered)
    return lowered


def _compile(graph: nn.Module, example: torch.Tensor) -> nn.Module:
    import torch._inductor.config as inductor_config

    old = inductor_config.freezing
    inductor_config.freezing = True
    try:
        compiled = torch.compile(graph, dynamic=False)
        with torch.no_grad():
            compiled(example)  # compile now, not inside a timing
    finally:
        inductor_config.freezing = old
    return compiled


def _wrap(
    model: nn.Module, graph: nn.Module, how: str, stored: nn.Module | None = None
) -> QuantizedModel:
    in_chans, classes = getattr(model, "in_chans", 3), getattr(model, "num_classes", 0)
    return QuantizedModel(graph, in_chans, classes, how, stored).train(False)


def _check_args(scheme: str = "int8", backend: str = "lower", calib_batches: int = 8) -> None:
    check_scheme(scheme, backend)
    if isinstance(calib_batches, bool) or not isinstance(calib_batches, int) or calib_batches < 1:
        raise ValueError(f"calib_batches must be an integer >= 1, got {calib_batches!r}")


@register_compressor("pt2e_int8", check=_check_args)
def pt2e_int8(
    model: nn.Module,
    ctx: CompressContext,
    scheme: str = "int8",
    backend: str = "lower",
    calib_batches: int = 8,
) -> CompressResult:
    """torchao PT2E post-training quantization with the x86 Inductor quantizer:
    ``scheme`` int8 (static activations), int8_dynamic, or fake (simulated);
    ``backend`` lower (oneDNN kernels, no compiler), compile (torch.compile) or auto."""
    check_scheme(scheme, backend)
    if calib_batches < 1:
        raise ValueError(f"calib_batches must be >= 1, got {calib_batches}")
    calibration = [b.to(ctx.device) for b in ctx.calibration_batches(calib_batches)]
    quantized, info = quantize_pt2e(
        model, ctx.example_input(1), calibration, scheme=scheme, backend=backend
    )
    return CompressResult(model=quantized, simulated=scheme == "fake", info=info)
