"""An inference path beyond eager: fold, fuse, re-lay-out and (optionally) compile a model.

:func:`optimize` returns a copy of a model for inference (eval mode, parameters frozen)
that computes the same function within a stated tolerance, faster on CPU:

1. **Structural reparameterization.** Families with train-time branches (*MobileOne*,
   RepVGG-style blocks, *UniRepLKNet*, *OverLoCK*, *ParNet*, *FFNet*) define
   ``reparameterize()``; it is called on the model, or on every submodule that has one.
2. **BatchNorm folding.** An eval-mode ``BatchNorm2d`` applied directly to the output of a
   ``Conv2d`` is folded into that convolution, ``w' = w * g / sqrt(v + eps)`` and
   ``b' = (b - m) * g / sqrt(v + eps) + beta`` (``torch.nn.utils.fusion.fuse_conv_bn_eval``
   does the arithmetic), and the BatchNorm becomes an ``nn.Identity``.
3. **channels_last** memory format for convolutional networks (two or more ``Conv2d``
   layers), which lets oneDNN run convolutions without re-ordering activations.
4. **bf16** (``dtype="bf16"``): floating weights and buffers are cast to bfloat16, the
   input is cast on the way in and the output back to float32 on the way out.
5. **oneDNN linear layers** (``onednn_linear``, float32 on the CPU): an ``nn.Linear`` is
   replaced by a :class:`~archbench.layers.packed_linear.PackedLinear` (same parameters
   and state dict) that runs oneDNN's inner product on a weight packed once, with the
   bias and, in an ``Mlp``, the GELU that follows in the kernel's epilogue. With
   ``"auto"`` (the default) each distinct layer shape is timed both ways on the rows
   ``example_input`` gives it (alternating, median of the per-round ratios) and packed
   only where oneDNN is at least 5% faster: which kernel wins depends on the shapes, the
   CPU and the load on it. ``True`` packs every linear layer, ``False`` none. Pass
   ``example_input`` at the batch size you will serve: the choice is made for its shapes.
6. **int8 linear layers** (``int8_linear=True``, opt-in, CPU): every ``nn.Linear`` the
   forward pass calls on data derived from the image is replaced by a
   :class:`~archbench.layers.int8_linear.DynamicInt8Linear`: int8 weights per output
   channel, activations quantized per call, PyTorch's FBGEMM int8 GEMM. This trades
   precision for speed (about 1-4% of the output's range on the models measured in
   ``docs/performance.md``), so it is checked against the looser :data:`INT8_TOLERANCE`
   and never on by default. It replaces the oneDNN linear step.
7. **torch.compile** (``compile=True``), in place (``nn.Module.compile``), so the model
   keeps its class and methods. A ``PackedLinear`` compiles as a plain linear layer.

Which Conv2d feeds which BatchNorm2d is found from the data flow of one traced forward
pass, not from attribute names: forward hooks record each convolution's output and each
BatchNorm's input, and the autograd graph of that pass counts who consumes the
convolution's output. A pair is folded only when the BatchNorm's input *is* the
convolution's output (same tensor, same autograd node, nothing in between, not even an
in-place op), the convolution output has no other consumer, and each module runs once
per forward. ``torch.fx.experimental.optimization.fuse`` is not used because it needs a
full ``symbolic_trace``, which fails on archbench's input checks and on any data-dependent
Python in ``forward``, and it returns a ``GraphModule`` that loses the model's API
(``forward_features``, ``feature_info``, ``cam_target``); the hook-based search works on
every model and folds in place.

Tolerance. After every step the optimized model is run on one input (``example_input``,
or a random batch of 2 at the model card's image size) and compared with the original
model in eval mode: the step is accepted when
``max |optimized - original| <= atol + rtol * max |original|``, with
``rtol = atol = 1e-4`` in float32 (:data:`FP32_TOLERANCE`) and ``rtol = 5e-2, atol = 1e-3``
in bf16 (:data:`BF16_TOLERANCE`; bfloat16 keeps 8 significant bits, about 0.4% per
rounding) and ``rtol = 0.1, atol = 1e-3`` with int8 linear layers (:data:`INT8_TOLERANCE`;
an int8 step is up to 1/254 of a channel's weight range and of the activations' range,
and the errors of successive layers add up). A model whose output moves beyond that, or
that fails to run after a step, is refused with a ``ValueError`` that names the step, so
that it can be switched off.

bf16 is refused (``ValueError``) on a CPU without native bfloat16 arithmetic (AVX512-BF16
or AMX): there PyTorch emulates it in float32 and it is slower than float32 itself, which
defeats an inference path whose point is speed. On CUDA it needs
``torch.cuda.is_bf16_supported()``.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .layers.int8_linear import DynamicInt8Linear, int8_linear_available
from .layers.mlp import Mlp
from .layers.packed_linear import PackedLinear, onednn_linear_available
from .layers.reparam import reparameterize_model

__all__ = [
    "BF16_TOLERANCE",
    "FP32_TOLERANCE",
    "INT8_TOLERANCE",
    "bf16_supported",
    "find_conv_bn_pairs",
    "fold_batchnorm",
    "optimize",
    "outputs_match",
    "pack_linears",
    "quantize_linears",
]

# (rtol, atol): |optimized - original| <= atol + rtol * max|original|, elementwise max.
FP32_TOLERANCE = (1e-4, 1e-4)
BF16_TOLERANCE = (5e-2, 1e-3)
INT8_TOLERANCE = (1e-1, 1e-3)

_DTYPES = {None: None, "fp32": None, "float32": None, "bf16": torch.bfloat16}


def bf16_supported(device: torch.device | str = "cpu") -> tuple[bool, str]:
    """Whether ``device`` does bfloat16 arithmetic natively, and why not if it does not."""
    device = torch.device(device)
    if device.type == "cuda":
        ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return ok, "" if ok else "this CUDA device has no bfloat16 support"
    if device.type != "cpu":
        return False, f"bf16 is only supported on cpu and cuda devices, not {device.type}"
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    if torch.cpu._is_avx512_bf16_supported() or amx:
        return True, ""
    capability = torch.backends.cpu.get_cpu_capability()
    return False, (
        f"this CPU ({capability}) has no native bfloat16 arithmetic (AVX512-BF16 or AMX); "
        "PyTorch would emulate it in float32, slower than float32 itself. Use dtype=None"
    )


def _flat_tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _flat_tensors(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _flat_tensors(o)]
    return []


def outputs_match(out: Any, ref: Any, rtol: float, atol: float) -> tuple[bool, float, float]:
    """Whether ``out`` equals ``ref`` within ``atol + rtol * max|ref|`` (every tensor).

    Returns ``(ok, max_abs_diff, allowed)``; non-finite or mismatched shapes never match.
    """
    outs, refs = _flat_tensors(out), _flat_tensors(ref)
    if len(outs) != len(refs) or not refs:
        return False, math.inf, 0.0
    worst, allowed_min = 0.0, math.inf
    ok = True
    for o, r in zip(outs, refs):
        if o.shape != r.shape:
            return False, math.inf, 0.0
        o, r = o.detach().float().cpu(), r.detach().float().cpu()
        if not torch.isfinite(o).all():
            return False, math.inf, 0.0
        allowed = atol + rtol * float(r.abs().max()) if r.numel() else atol
        diff = float((o - r).abs().max()) if r.numel() else 0.0
        worst, allowed_min = max(worst, diff), min(allowed_min, allowed)
        ok = ok and diff <= allowed
    return ok, worst, allowed_min


def _consumer_counts(outputs: list[torch.Tensor]) -> dict[Any, int]:
    """How many autograd nodes take each node's output as input (graph reachable from outputs)."""
    counts: dict[Any, int] = {}
    seen: set[Any] = set()
    stack = [t.grad_fn for t in outputs if t.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for child, _ in node.next_functions:
            if child is None:
                continue
            counts[child] = counts.get(child, 0) + 1
            stack.append(child)
    return counts


def find_conv_bn_pairs(model: nn.Module, example_input: torch.Tensor) -> list[tuple[str, str]]:
    """Names of ``(Conv2d, BatchNorm2d)`` pairs where the BatchNorm directly follows the conv.

    One forward pass of ``model`` (eval mode, gradients on) on ``example_input`` is traced:
    a pair qualifies when the BatchNorm's input is the convolution's output tensor with the
    same autograd node (nothing in between, no in-place op), that node has no other
    consumer, both modules run exactly once and are registered under one name each, and
    both are the plain ``torch.nn`` classes (a subclass may compute something else).
    """
    names: dict[nn.Module, list[str]] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        names.setdefault(m, []).append(name)
    convs = [m for m in names if type(m) is nn.Conv2d]
    bns = [
        m
        for m in names
        if type(m) is nn.BatchNorm2d and m.running_mean is not None and m.running_var is not None
    ]
    calls: dict[nn.Module, int] = {}
    conv_out: dict[nn.Module, tuple[torch.Tensor, Any]] = {}
    bn_in: dict[nn.Module, tuple[torch.Tensor, Any]] = {}

    def conv_hook(m: nn.Module, args: tuple, out: Any) -> None:
        calls[m] = calls.get(m, 0) + 1
        if isinstance(out, torch.Tensor):
            conv_out[m] = (out, out.grad_fn)

    def bn_hook(m: nn.Module, args: tuple) -> None:
        calls[m] = calls.get(m, 0) + 1
        if args and isinstance(args[0], torch.Tensor):
            bn_in[m] = (args[0], args[0].grad_fn)

    handles = [m.register_forward_hook(conv_hook) for m in convs]
    handles += [m.register_forward_pre_hook(bn_hook) for m in bns]
    grads = {p: p.requires_grad for p in model.parameters()}
    was_training = model.training
    try:
        model.eval()
        for p in grads:
            p.requires_grad_(True)
        with torch.enable_grad():
            out = model(example_input)
        consumers = _consumer_counts(_flat_tensors(out))
    finally:
        for h in handles:
            h.remove()
        for p, g in grads.items():
            p.requires_grad_(g)
        model.train(was_training)
    by_tensor = {id(t): (m, node) for m, (t, node) in conv_out.items()}
    pairs = []
    for bn, (x, node) in bn_in.items():
        hit = by_tensor.get(id(x))
        if hit is None or node is None:
            continue
        conv, conv_node = hit
        if conv_out[conv][0] is not x or conv_node is not node:
            continue
        if calls.get(conv) != 1 or calls.get(bn) != 1:
            continue
        if len(names[conv]) != 1 or len(names[bn]) != 1:
            continue
        if consumers.get(node, 0) != 1 or conv.out_channels != bn.num_features:
            continue
        pairs.append((names[conv][0], names[bn][0]))
    return pairs


@torch.no_grad()
def fold_batchnorm(model: nn.Module, pairs: list[tuple[str, str]]) -> nn.Module:
    """Fold each ``(conv, bn)`` pair of ``model`` in place: the conv takes the BatchNorm's
    affine map, the BatchNorm becomes ``nn.Identity``. Returns the model."""
    model.eval()
    for conv_name, bn_name in pairs:
        conv = model.get_submodule(conv_name)
        bn = model.get_submodule(bn_name)
        fused = fuse_conv_bn_eval(conv, bn)
        _set_submodule(model, conv_name, fused)
        _set_submodule(model, bn_name, nn.Identity())
    return model


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, module)


def _default_input(model: nn.Module, device: torch.device) -> torch.Tensor:
    card = getattr(model, "model_card", None)
    if card is None:
        raise ValueError(
            "optimize needs example_input for a model that was not built by create_model "
            "(it has no model_card giving its image size); pass a batch of the inputs it takes"
        )
    in_chans = getattr(model, "in_chans", 3)
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, in_chans, card.img_size, card.img_size, generator=g).to(device)


def _to_channels_last(model: nn.Module) -> None:
    def hook(m: nn.Module, args: tuple) -> tuple:
        if args and isinstance(args[0], torch.Tensor) and args[0].ndim == 4:
            return (args[0].contiguous(memory_format=torch.channels_last), *args[1:])
        return args

    for m in model.modules():  # 4-D weights only: model.to() refuses models with other ranks
        if isinstance(m, nn.Conv2d) and m.weight.ndim == 4:
            m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last)
    model.register_forward_pre_hook(hook)


def _to_dtype(model: nn.Module, dtype: torch.dtype) -> None:
    def cast_in(m: nn.Module, args: tuple) -> tuple:
        if args and isinstance(args[0], torch.Tensor) and args[0].is_floating_point():
            return (args[0].to(dtype), *args[1:])
        return args

    def cast_out(m: nn.Module, args: tuple, out: Any) -> Any:
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            return out.float()
        return out

    model.to(dtype)
    model.register_forward_pre_hook(cast_in)
    model.register_forward_hook(cast_out)


# oneDNN replaces a linear layer only where it is at least this much faster ("auto").
LINEAR_MIN_GAIN = 1.05


def _linear_inputs(
    model: nn.Module, batches: list[torch.Tensor], summarize: Callable[[torch.Tensor], Any]
) -> dict[str, list[list[Any]]]:
    """``summarize`` of the float32 CPU input of every call of every exact ``nn.Linear``
    (a subclass may compute something else), per batch of ``batches`` run through
    ``model`` in turn: name -> one list per batch, in call order (layers that never ran
    are absent). Only the summaries are kept, not the inputs."""
    seen: dict[str, list[list[Any]]] = {}
    current = [0]

    def record(name: str) -> Callable[[nn.Module, tuple], None]:
        def hook(_m: nn.Module, args: tuple) -> None:
            x = args[0] if args else None
            if isinstance(x, torch.Tensor) and x.device.type == "cpu" and x.dtype == torch.float32:
                seen.setdefault(name, [[] for _ in batches])[current[0]].append(summarize(x))

        return hook

    handles = [
        m.register_forward_pre_hook(record(name))
        for name, m in model.named_modules()
        if type(m) is nn.Linear
    ]
    try:
        with torch.no_grad():
            for i, batch in enumerate(batches):
                current[0] = i
                model(batch)
    finally:
        for h in handles:
            h.remove()
    return seen


def _linear_plan(model: nn.Module, example_input: torch.Tensor) -> list[tuple[str, str, tuple]]:
    """(name, activation to fuse, input shape) of every float32 CPU ``nn.Linear`` that runs
    on ``example_input``; the activation is GELU when the layer is an ``Mlp``'s ``fc1``."""
    shapes = {
        name: first
        for name, ((first, *_),) in _linear_inputs(
            model, [example_input], lambda x: tuple(x.shape)
        ).items()
    }
    gelu_after: dict[str, str] = {}
    for name, m in model.named_modules():
        # exactly Mlp: a subclass may use fc1's output otherwise than act(fc1(x))
        if type(m) is Mlp and type(m.fc1) is nn.Linear and type(m.act) is nn.GELU:
            act = "gelu_tanh" if m.act.approximate == "tanh" else "gelu"
            gelu_after[f"{name}.fc1" if name else "fc1"] = act
    return [(name, gelu_after.get(name, "none"), shape) for name, shape in shapes.items()]


def _linear_speedup(linear: nn.Linear, act: str, shape: tuple, rounds: int = 7) -> float:
    """Median per-round ratio (eager time / oneDNN time) of one layer on random rows of
    ``shape``, the two kernels alternating; the eager side includes the GELU it fuses."""
    packed = PackedLinear.from_linear(linear, act)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))

    def timed(fn: Callable[[torch.Tensor], torch.Tensor]) -> float:
        t0 = time.perf_counter()
        fn(x)
        return time.perf_counter() - t0

    with torch.no_grad():
        for _ in range(2):  # warm-up: oneDNN builds its kernel on the first call
            timed(packed._plain)
            timed(packed)
        ratios = []
        for i in range(rounds):
            if i % 2:
                fast = timed(packed)
                ratios.append(timed(packed._plain) / fast)
            else:
                eager = timed(packed._plain)
                ratios.append(eager / timed(packed))
    return statistics.median(ratios)


def _choose_linears(
    model: nn.Module, example_input: torch.Tensor, mode: bool | str
) -> tuple[list[tuple[str, str]], list[dict[str, Any]]]:
    """The linear layers to run through oneDNN (name, fused activation), and what was timed."""
    chosen, measured, speedups = [], [], {}
    for name, act, shape in _linear_plan(model, example_input):
        lin = model.get_submodule(name)
        if mode == "auto":
            key = (lin.in_features, lin.out_features, lin.bias is not None, act, shape)
            if key not in speedups:
                speedups[key] = _linear_speedup(lin, act, shape)
                measured.append(
                    {
                        "in": key[0],
                        "out": key[1],
                        "act": act,
                        "input_shape": list(shape),
                        "speedup": round(speedups[key], 3),
                    }
                )
            if speedups[key] < LINEAR_MIN_GAIN:
                continue
        chosen.append((name, act))
    return chosen, measured


def pack_linears(model: nn.Module, chosen: list[tuple[str, str]]) -> nn.Module:
    """Replace each named ``nn.Linear`` by a ``PackedLinear`` sharing its parameters; a
    fused GELU leaves its ``Mlp``'s ``act`` an ``nn.Identity``. In place; returns ``model``."""
    for name, act in chosen:
        _set_submodule(model, name, PackedLinear.from_linear(model.get_submodule(name), act))
        if act != "none":
            parent = name.rpartition(".")[0]
            _set_submodule(model, f"{parent}.act" if parent else "act", nn.Identity())
    return model


def _data_linears(model: nn.Module, example_input: torch.Tensor) -> list[str]:
    """The exact ``nn.Linear`` layers that the forward pass calls on data derived from its
    input, in call order. Layers whose input is the same whatever the image (coordinate
    tables of positional-bias MLPs, the kernel networks of continuous convolutions) are
    left out: quantizing them gains no speed and only moves the outputs. Found by running
    ``example_input`` and a second, different batch of the same shape and comparing each
    layer's inputs (sum and sum of squares, per call)."""
    other = torch.randn(
        example_input.shape, generator=torch.Generator().manual_seed(1), dtype=example_input.dtype
    ).to(example_input.device)

    def moments(x: torch.Tensor) -> tuple[float, float]:
        x64 = x.detach().double()
        return x64.sum().item(), x64.square().sum().item()

    seen = _linear_inputs(model, [example_input, other], moments)
    return [name for name, (first, second) in seen.items() if first != second]


def quantize_linears(model: nn.Module, names: list[str]) -> nn.Module:
    """Replace each named ``nn.Linear`` by its :class:`DynamicInt8Linear`. In place."""
    for name in names:
        _set_submodule(model, name, DynamicInt8Linear.from_linear(model.get_submodule(name)))
    return model


def optimize(
    model: nn.Module,
    *,
    fold_bn: bool = True,
    reparameterize: bool = True,
    channels_last: bool = True,
    dtype: str | None = None,
    compile: bool = False,
    example_input: torch.Tensor | None = None,
    onednn_linear: bool | str = "auto",
    int8_linear: bool = False,
) -> nn.Module:
    """A copy of ``model`` for inference: reparameterized, BatchNorm folded, channels_last,
    linear layers on oneDNN where faster, optionally bf16 and compiled, checked to give
    the original's outputs.

    ``model`` itself is not changed. The copy is in eval mode with ``requires_grad=False``
    on every parameter and keeps its class and methods. ``example_input`` (default: a
    random batch of 2 at the model card's image size) is used to trace the data flow and
    to check each step against the original within :data:`FP32_TOLERANCE` (float32) or
    :data:`BF16_TOLERANCE` (``dtype="bf16"``) or :data:`INT8_TOLERANCE`
    (``int8_linear=True``). A step that changes the outputs beyond the tolerance, or makes
    the model fail, raises ``ValueError`` naming it.
    The copy's ``optimize_report`` attribute lists what was done (steps, folded pairs,
    largest difference seen at the end).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"optimize needs a torch.nn.Module, got {type(model).__name__}")
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be None, 'fp32' or 'bf16', got {dtype!r}")
    for flag, value in [
        ("fold_bn", fold_bn),
        ("reparameterize", reparameterize),
        ("channels_last", channels_last),
        ("compile", compile),
        ("int8_linear", int8_linear),
    ]:
        if not isinstance(value, bool):
            raise TypeError(f"{flag} must be True or False, got {value!r}")
    if not (isinstance(onednn_linear, bool) or onednn_linear == "auto"):
        raise ValueError(f"onednn_linear must be 'auto', True or False, got {onednn_linear!r}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    if device.type == "meta":
        raise ValueError("optimize needs a model with real weights, not one on the meta device")
    target_dtype = _DTYPES[dtype]
    if target_dtype is not None:
        ok, why = bf16_supported(device)
        if not ok:
            raise ValueError(f"dtype='bf16' refused: {why}")
    linear_ok, linear_why = onednn_linear_available()
    if device.type != "cpu":
        linear_ok, linear_why = False, f"the model is on {device.type}, not the CPU"
    elif target_dtype is not None:
        linear_ok, linear_why = False, "the packed kernel is used in float32 only"
    if onednn_linear is True and not linear_ok:
        raise ValueError(f"onednn_linear=True refused: {linear_why}")
    if int8_linear:
        int8_ok, int8_why = int8_linear_available()
        if device.type != "cpu":
            int8_ok, int8_why = False, f"the model is on {device.type}; the int8 kernel is CPU-only"
        elif target_dtype is not None:
            int8_ok, int8_why = False, "it cannot be combined with dtype='bf16'"
        if not int8_ok:
            raise ValueError(f"int8_linear=True refused: {int8_why}")
        if onednn_linear is True:
            raise ValueError(
                "int8_linear=True replaces the linear layers; pass onednn_linear=False"
            )
    if example_input is None:
        example_input = _default_input(model, device)
    if not isinstance(example_input, torch.Tensor):
        raise TypeError(f"example_input must be a tensor batch, got {type(example_input).__name__}")
    if example_input.is_floating_point() and not torch.isfinite(example_input).all():
        raise ValueError("example_input contains NaN or inf; pass a finite batch")

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            reference = model(example_input)
        opt = copy.deepcopy(model)
    except Exception as err:  # the original must run before anything can be compared
        raise ValueError(f"optimize could not run the model on example_input: {err}") from err
    finally:
        model.train(was_training)
    if not all(torch.isfinite(t).all() for t in _flat_tensors(reference)):
        raise ValueError("the model's own output on example_input is not finite; cannot check")
    opt.eval()
    report: dict[str, Any] = {"steps": [], "folded": []}
    rtol, atol = FP32_TOLERANCE

    def apply(step: str, change: Callable[[], Any]) -> None:
        """Make one change to ``opt`` and check it against the reference."""
        try:
            with torch.no_grad():
                change()
                out = opt(example_input)
        except Exception as err:
            raise ValueError(
                f"optimize refused {type(model).__name__}: the model fails after {step} "
                f"({type(err).__name__}: {err}); call optimize with that step switched off"
            ) from err
        ok, diff, allowed = outputs_match(out, reference, rtol, atol)
        if not ok:
            raise ValueError(
                f"optimize refused {type(model).__name__}: {step} changes its outputs "
                f"(max |difference| {diff:.3g} > allowed {allowed:.3g}); call optimize with "
                "that step switched off"
            )
        report["steps"].append(step)

    def reparameterize_all() -> None:
        if callable(getattr(opt, "reparameterize", None)):
            opt.reparameterize()  # the family's own model-level fuse
        else:
            reparameterize_model(opt)  # every block that defines one, innermost first
        opt.eval()

    if reparameterize and any(hasattr(m, "reparameterize") for m in opt.modules()):
        apply("reparameterize", reparameterize_all)
    if fold_bn:
        pairs = find_conv_bn_pairs(opt, example_input)
        if pairs:
            report["folded"] = pairs
            apply("fold_bn", lambda: fold_batchnorm(opt, pairs))
    if channels_last and sum(isinstance(m, nn.Conv2d) for m in opt.modules()) >= 2:
        apply("channels_last", lambda: _to_channels_last(opt))
    if int8_linear:
        if not example_input.is_floating_point():
            raise ValueError("int8_linear=True needs a floating-point example_input (images)")
        names = _data_linears(opt, example_input)
        report["int8_linear"] = names
        if names:
            rtol, atol = INT8_TOLERANCE
            apply("int8_linear", lambda: quantize_linears(opt, names))
    elif onednn_linear and linear_ok:
        chosen, measured = _choose_linears(opt, example_input, onednn_linear)
        report["onednn_linear"] = {"packed": [name for name, _ in chosen], "timed": measured}
        if chosen:
            apply("onednn_linear", lambda: pack_linears(opt, chosen))
    elif onednn_linear:
        report["onednn_linear"] = {"skipped": linear_why}
    if target_dtype is not None:
        rtol, atol = BF16_TOLERANCE
        apply("bf16", lambda: _to_dtype(opt, target_dtype))
    for p in opt.parameters():
        p.requires_grad_(False)
    if compile:
        apply("compile", opt.compile)
    with torch.no_grad():
        _, diff, _ = outputs_match(opt(example_input), reference, rtol, atol)
    report["max_abs_diff"] = diff
    report["tolerance"] = {"rtol": rtol, "atol": atol}
    opt.optimize_report = report
    return opt
