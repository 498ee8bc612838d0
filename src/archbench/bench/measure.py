"""Measurement: parameters, FLOPs/MACs, latency, throughput, peak memory, environment.

Every figure is returned with the conditions it was measured under (batch, threads,
warm-up and repeat counts, device), and :func:`environment` records the machine.
FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode``, which counts the
matrix-multiply, convolution and attention operators (2 FLOPs per multiply-add);
element-wise work is not counted, so MACs = FLOPs / 2 are the usual "GMACs" figure.
"""

from __future__ import annotations

import contextlib
import copy
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "LatencyResult",
    "ThroughputResult",
    "count_flops",
    "count_params",
    "environment",
    "measure_latency",
    "measure_model",
    "measure_peak_memory",
    "measure_throughput",
]


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str | torch.device = "cpu") -> dict[str, Any]:
    """The conditions a figure was measured under."""
    device = torch.device(device)
    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env


def count_params(model: nn.Module) -> dict[str, int]:
    """Total and trainable parameter counts (shared parameters counted once)."""
    params = list(model.parameters())
    return {
        "total": sum(p.numel() for p in params),
        "trainable": sum(p.numel() for p in params if p.requires_grad),
    }


def _input_shape(
    model: nn.Module, img_size: int | tuple[int, int] | None, batch: int
) -> tuple[int, ...]:
    in_chans = getattr(model, "in_chans", 3)
    if img_size is None:
        card = getattr(model, "model_card", None)
        img_size = card.img_size if card is not None else 224
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    return (batch, in_chans, h, w)


def count_flops(
    model: nn.Module,
    img_size: int | tuple[int, int] | None = None,
    batch: int = 1,
    on_meta: bool = True,
) -> dict[str, float]:
    """FLOPs and MACs of one forward pass at ``batch``, in eval mode.

    With ``on_meta`` the count runs on a ``meta`` copy of the model: no memory, no compute.
    Models whose operators lack meta kernels fall back to the real device.
    """
    shape = _input_shape(model, img_size, batch)
    was_training = model.training

    def run(m: nn.Module, device: torch.device) -> int:
        m.eval()
        x = torch.zeros(shape, device=device)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            m(x)
        return counter.get_total_flops()

    flops = None
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    if on_meta and device.type != "meta":
        try:
            flops = run(copy.deepcopy(model).to("meta"), torch.device("meta"))
        except (NotImplementedError, RuntimeError):
            flops = None
    if flops is None:
        flops = run(model, device)
    model.train(was_training)
    return {"flops": float(flops), "macs": flops / 2.0, "batch": batch, "input_shape": list(shape)}


@dataclass
class LatencyResult:
    median_ms: float
    p90_ms: float
    min_ms: float
    batch: int
    warmup: int
    repeats: int
    device: str
    threads: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ThroughputResult:
    images_per_s: float
    batch: int
    seconds: float
    iterations: int
    device: str
    threads: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence the profiler's native start/stop log lines (written to file descriptor 2)."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def measure_latency(
    model: nn.Module,
    img_size: int | tuple[int, int] | None = None,
    batch: int = 1,
    warmup: int = 5,
    repeats: int = 20,
) -> LatencyResult:
    """Median wall-clock time of one eval-mode forward pass after ``warmup`` passes."""
    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be >= 1 and warmup >= 0")
    device = _model_device(model)
    was_training = model.training
    model.eval()
    x = torch.randn(_input_shape(model, img_size, batch), device=device)
    for _ in range(warmup):
        model(x)
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(x)
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    model.train(was_training)
    times.sort()
    return LatencyResult(
        median_ms=statistics.median(times),
        p90_ms=times[min(len(times) - 1, int(0.9 * len(times)))],
        min_ms=times[0],
        batch=batch,
        warmup=warmup,
        repeats=repeats,
        device=str(device),
        threads=torch.get_num_threads(),
    )


@torch.no_grad()
def measure_throughput(
    model: nn.Module,
    img_size: int | tuple[int, int] | None = None,
    batch: int = 64,
    warmup: int = 2,
    min_seconds: float = 1.0,
    max_iterations: int = 200,
) -> ThroughputResult:
    """Images per second of eval-mode forward passes at ``batch``, after warm-up."""
    device = _model_device(model)
    was_training = model.training
    model.eval()
    x = torch.randn(_input_shape(model, img_size, batch), device=device)
    for _ in range(warmup):
        model(x)
    _sync(device)
    iterations = 0
    t0 = time.perf_counter()
    while True:
        model(x)
        iterations += 1
        _sync(device)
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds or iterations >= max_iterations:
            break
    model.train(was_training)
    return ThroughputResult(
        images_per_s=batch * iterations / elapsed,
        batch=batch,
        seconds=elapsed,
        iterations=iterations,
        device=str(device),
        threads=torch.get_num_threads(),
    )


def measure_peak_memory(
    model: nn.Module,
    img_size: int | tuple[int, int] | None = None,
    batch: int = 1,
    train: bool = False,
) -> dict[str, Any]:
    """Peak bytes of tensor memory allocated during one pass (forward, plus backward if ``train``).

    On CUDA this is ``torch.cuda.max_memory_allocated`` above the baseline. On CPU the
    profiler's allocation events are replayed and the running total's maximum is taken;
    memory held before the pass (weights) is excluded in both cases.
    """
    device = _model_device(model)
    was_training = model.training
    model.train(train)
    x = torch.randn(_input_shape(model, img_size, batch), device=device)

    def step() -> None:
        if train:
            model(x).float().sum().backward()
        else:
            with torch.no_grad():
                model(x)

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        from torch.profiler import ProfilerActivity, profile

        with (
            _quiet_stderr(),
            profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof,
        ):
            step()
        # Allocations are attributed to the operator that made them (its *self* usage, so
        # nested operators are not counted twice); frees appear as "[memory]" events.
        running, peak = 0, 0
        events = [e for e in prof.events() if e.self_cpu_memory_usage]
        events.sort(key=lambda e: e.time_range.start)
        for e in events:
            running += e.self_cpu_memory_usage
            peak = max(peak, running)
    if train:
        model.zero_grad(set_to_none=True)
    model.train(was_training)
    return {"peak_bytes": int(peak), "batch": batch, "train": train, "device": str(device)}


def measure_model(
    model: nn.Module,
    img_size: int | tuple[int, int] | None = None,
    batch: int = 64,
    latency_repeats: int = 20,
    throughput_seconds: float = 1.0,
    memory: bool = True,
) -> dict[str, Any]:
    """All standard figures for one model, with the conditions they were measured under."""
    shape = _input_shape(model, img_size, 1)
    size = [shape[2], shape[3]]
    record: dict[str, Any] = {"img_size": size}
    params = count_params(model)
    record["params"] = params["total"]
    record["trainable_params"] = params["trainable"]
    record["macs"] = count_flops(model, (size[0], size[1]))["macs"]
    lat = measure_latency(model, (size[0], size[1]), batch=1, repeats=latency_repeats)
    record["latency_ms"] = lat.median_ms
    record["latency"] = lat.to_dict()
    thr = measure_throughput(model, (size[0], size[1]), batch=batch, min_seconds=throughput_seconds)
    record["throughput"] = thr.images_per_s
    record["throughput_detail"] = thr.to_dict()
    if memory:
        record["peak_memory_mb"] = (
            measure_peak_memory(model, (size[0], size[1]), batch=batch)["peak_bytes"] / 2**20
        )
        record["peak_memory_batch"] = batch
    record["environment"] = environment(_model_device(model))
    return record
