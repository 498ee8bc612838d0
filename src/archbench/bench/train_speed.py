"""Training speed and how much of the machine it uses.

:func:`measure_train_throughput` times full training steps (forward, cross-entropy,
backward, SGD step) of a copy of a model, so the model passed in keeps its weights and
statistics. :func:`count_train_flops` counts the FLOPs of one step's forward and
backward passes with ``torch.utils.flop_counter.FlopCounterMode`` (matrix multiplies,
convolutions and attention, 2 FLOPs per multiply-add, as :func:`count_flops` does for
inference; element-wise work is not counted). :func:`measure_peak_flops` times the best
case for the same arithmetic on this machine in both of the engines torch runs it on: a
square matrix multiply (the BLAS library, MKL in the x86 wheels) and a 1x1 convolution in
channels_last (oneDNN), and keeps the faster. One engine is not enough: on an AMD CPU
with AVX512, MKL's sgemm runs its AVX2 code (about 100 GFLOP/s on one core, measured)
while oneDNN's convolutions use AVX512 (about 220, the core's FMA peak), so a model made
of convolutions and oneDNN linears showed 140-170% of the matmul rate. The ratio, achieved
FLOP/s over that peak, is the training step's utilization: a model at 60% spends its time
in large matrix products; one at 5% in small or memory-bound operators, Python overhead
or copies.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from .measure import (
    STABLE_RATIO,
    ThroughputResult,
    _calibrate,
    _input_shape,
    _model_device,
    _sync,
    throughput_result,
    timed_blocks,
)

__all__ = [
    "count_train_flops",
    "measure_peak_flops",
    "measure_train_throughput",
    "train_utilization",
]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _num_outputs(model: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad():
        out = model.eval()(x[:1])
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise ValueError(
            f"training speed needs a classifier returning (batch, classes) logits; "
            f"{type(model).__name__} returned "
            f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}"
        )
    return out.shape[1]


def _train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def _inputs(model: nn.Module, img_size: Any, batch: int, device: torch.device) -> tuple:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(_input_shape(model, img_size, batch), generator=g).to(device)
    classes = _num_outputs(model, x)
    y = torch.randint(0, classes, (batch,), generator=g).to(device)
    return x, y


def count_train_flops(
    model: nn.Module, img_size: int | tuple[int, int] | None = None, batch: int = 2
) -> dict[str, float]:
    """FLOPs of one training step's forward and backward passes, per image.

    Counted on a copy of the model in train mode (the copy is discarded), at ``batch``
    (2 by default: batch statistics need more than one image); the optimizer's element-wise
    update is not counted.
    """
    work = copy.deepcopy(model).train()
    x, y = _inputs(work, img_size, batch, _model_device(work))
    work.train()
    forward = FlopCounterMode(display=False)
    with forward:
        loss = nn.functional.cross_entropy(work(x), y)
    backward = FlopCounterMode(display=False)
    with backward:
        loss.backward()
    f, b = forward.get_total_flops(), backward.get_total_flops()
    return {
        "forward_flops_per_image": f / batch,
        "backward_flops_per_image": b / batch,
        "train_flops_per_image": (f + b) / batch,
        "batch": batch,
    }


def _rate(call: Callable[[], Any], flops: float, repeats: int, min_seconds: float, timer):
    call()
    number = _calibrate(call, min_seconds / repeats, 1000, timer, lambda: None)
    timed = timed_blocks(call, repeats, number, timer=timer)
    seconds = sorted(timed.times)[len(timed.times) // 2]
    rate = flops / seconds if seconds > 0 else math.inf
    return {"flops_per_s": rate, "unstable": timed.unstable, "load_avg": timed.load_avg}


def measure_peak_flops(
    dtype: str = "fp32",
    n: int = 1024,
    repeats: int = 5,
    min_seconds: float = 0.5,
    timer: Callable[[], float] = time.perf_counter,
    *,
    conv_channels: int = 256,
) -> dict[str, Any]:
    """The machine's best FLOP/s for dense products, on the CPU with torch's threads now.

    Two kernels, each the median of a stable block of repeats (as :func:`timed_blocks`):
    ``mm``, an ``n x n`` by ``n x n`` ``torch.mm`` (``2 n^3`` FLOPs, the BLAS library),
    and ``conv1x1``, a 1x1 convolution of ``conv_channels`` to ``conv_channels`` channels
    on a channels_last (64, C, 8, 8) batch (``2 * 4096 * C^2`` FLOPs, oneDNN). The peak,
    ``flops_per_s``, is the faster of the two; ``kernels`` keeps both rates and ``kernel``
    names the one taken. ``dtype`` is ``fp32`` or ``bf16``.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if n < 1 or conv_channels < 1:
        raise ValueError(f"n and conv_channels must be >= 1, got {n} and {conv_channels}")
    dt = DTYPES[dtype]
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dt)
    b = torch.randn(n, n, generator=g).to(dt)
    c = conv_channels
    x = torch.randn(64, c, 8, 8, generator=g).to(dt).contiguous(memory_format=torch.channels_last)
    w = torch.randn(c, c, 1, 1, generator=g).to(dt).contiguous(memory_format=torch.channels_last)
    kernels = {
        "mm": _rate(lambda: torch.mm(a, b), 2.0 * n**3, repeats, min_seconds, timer),
        "conv1x1": _rate(
            lambda: torch.nn.functional.conv2d(x, w),
            2.0 * 64 * 8 * 8 * c * c,
            repeats,
            min_seconds,
            timer,
        ),
    }
    best = max(kernels, key=lambda k: kernels[k]["flops_per_s"])
    return {
        "flops_per_s": kernels[best]["flops_per_s"],
        "kernel": best,
        "kernels": {k: v["flops_per_s"] for k, v in kernels.items()},
        "dtype": dtype,
        "n": n,
        "conv_channels": c,
        "threads": torch.get_num_threads(),
        "unstable": kernels[best]["unstable"],
        "load_avg": kernels[best]["load_avg"],
    }


def measure_train_throughput(
    model: nn.Module,
    img_size: int | tuple[int, int] | None = None,
    batch: int = 64,
    warmup: int = 2,
    min_seconds: float = 1.0,
    max_iterations: int = 100,
    *,
    repeats: int = 5,
    number: int | None = None,
    max_blocks: int = 4,
    max_ratio: float = STABLE_RATIO,
    timer: Callable[[], float] = time.perf_counter,
) -> ThroughputResult:
    """Training images per second of a copy of ``model`` (the model itself is not touched).

    A step is forward, cross-entropy against random labels, backward and an SGD step
    (momentum 0.9) in train mode; blocks, spread and stability as in
    :func:`archbench.bench.measure_throughput`.
    """
    if batch < 2:
        raise ValueError(f"a training step needs batch >= 2 (batch statistics), got {batch}")
    if repeats < 2 or warmup < 0:
        raise ValueError(f"repeats must be >= 2 and warmup >= 0, got {repeats} and {warmup}")
    work = copy.deepcopy(model)
    device = _model_device(work)
    x, y = _inputs(work, img_size, batch, device)
    work.train()
    step = _train_step(work, x, y)
    for _ in range(warmup):
        step()
    sync = lambda: _sync(device)  # noqa: E731
    sync()
    if number is None:
        number = _calibrate(
            step, min_seconds / repeats, max(1, max_iterations // repeats), timer, sync
        )
    timed = timed_blocks(
        step, repeats, number, max_blocks=max_blocks, max_ratio=max_ratio, timer=timer, sync=sync
    )
    return throughput_result(timed, batch, device, max_ratio)


def train_utilization(
    images_per_s: float, train_flops_per_image: float, peak_flops_per_s: float
) -> dict[str, float]:
    """Achieved training FLOP/s and its share of the machine's peak (``measure_peak_flops``)."""
    if peak_flops_per_s <= 0:
        raise ValueError(f"peak FLOP/s must be positive, got {peak_flops_per_s}")
    achieved = images_per_s * train_flops_per_image
    return {"train_flops_per_s": achieved, "utilization": achieved / peak_flops_per_s}
