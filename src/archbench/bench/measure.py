"""Measurement: parameters, FLOPs/MACs, latency, throughput, peak memory, environment.

Every figure is returned with the conditions it was measured under (batch, threads,
warm-up and repeat counts, device), and :func:`environment` records the machine.
FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode``, which counts the
matrix-multiply, convolution and attention operators (2 FLOPs per multiply-add);
element-wise work is not counted, so MACs = FLOPs / 2 are the usual "GMACs" figure.

Timings are taken in blocks of repeats. A block is accepted when it is stable: its
slowest repeat is at most ``STABLE_RATIO`` (1.25) times its fastest. An unstable block
(another process took the cores for a while) is measured again, a few times; when no
block is stable the figure is still given, from the least unstable block, and flagged
``unstable``. Every timing carries its spread and the machine's load average.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from ..allocator import freed_memory_retained
from ..layers.helpers import cpuinfo_field

__all__ = [
    "STABLE_RATIO",
    "LatencyResult",
    "ThroughputResult",
    "TimedBlocks",
    "block_ratio",
    "count_flops",
    "count_params",
    "environment",
    "load_average",
    "measure_latency",
    "measure_model",
    "measure_peak_memory",
    "measure_throughput",
    "throughput_result",
    "timed_blocks",
]


def _cpu_name() -> str:
    return cpuinfo_field("model name") or platform.processor() or platform.machine()


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
        "freed_memory_retained": freed_memory_retained(),
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


# A block of repeated measurements is accepted when its slowest repeat is at most this
# many times its fastest; otherwise it is measured again, up to ``max_blocks`` blocks.
STABLE_RATIO = 1.25


@dataclass
class LatencyResult:
    """Latency of one forward pass at ``batch``, from the accepted block of repeats.

    ``median_ms`` is the figure; ``min_ms``, ``max_ms``, ``q1_ms`` / ``q3_ms`` (the IQR)
    and ``p90_ms`` are the block's spread. Each repeat times ``number`` consecutive passes
    and divides by ``number``. ``blocks`` blocks were measured; ``ratio`` is the accepted
    block's max/min; ``unstable`` is true when no block met ``ratio <= max_ratio`` (the
    block with the smallest ratio is then reported). ``load_avg`` is the 1, 5 and 15 minute
    load average (``os.getloadavg``) when the reported block ended.
    """

    median_ms: float
    p90_ms: float
    min_ms: float
    batch: int
    warmup: int
    repeats: int
    device: str
    threads: int
    max_ms: float = 0.0
    q1_ms: float = 0.0
    q3_ms: float = 0.0
    number: int = 1
    blocks: int = 1
    ratio: float = 1.0
    max_ratio: float = STABLE_RATIO
    unstable: bool = False
    load_avg: list[float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ThroughputResult:
    """Images per second of eval-mode forward passes at ``batch``, from the accepted block.

    Each of the block's ``repeats`` measurements times ``number`` batches;
    ``images_per_s`` comes from the block's median, ``min_images_per_s`` /
    ``max_images_per_s`` and the quartiles ``q1_images_per_s`` / ``q3_images_per_s`` are
    its spread. ``seconds`` and ``iterations`` are the accepted block's timed seconds and
    batches. ``blocks``, ``ratio``, ``unstable`` and ``load_avg`` as in :class:`LatencyResult`.
    """

    images_per_s: float
    batch: int
    seconds: float
    iterations: int
    device: str
    threads: int
    min_images_per_s: float = 0.0
    max_images_per_s: float = 0.0
    q1_images_per_s: float = 0.0
    q3_images_per_s: float = 0.0
    repeats: int = 1
    number: int = 1
    blocks: int = 1
    ratio: float = 1.0
    max_ratio: float = STABLE_RATIO
    unstable: bool = False
    load_avg: list[float] | None = None

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


@dataclass
class TimedBlocks:
    """Seconds per call of each repeat of the reported block, and how it was chosen."""

    times: list[float]
    number: int
    blocks: int
    ratio: float
    unstable: bool
    load_avg: list[float] | None


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load average, or None where the platform has none."""
    try:
        return [round(float(v), 3) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def block_ratio(times: list[float]) -> float:
    """max / min of a block's repeats (inf when the fastest took no time)."""
    lo, hi = min(times), max(times)
    return hi / lo if lo > 0 else math.inf


def timed_blocks(
    call: Callable[[], Any],
    repeats: int,
    number: int,
    *,
    max_blocks: int = 4,
    max_ratio: float = STABLE_RATIO,
    timer: Callable[[], float] = time.perf_counter,
    sync: Callable[[], None] = lambda: None,
) -> TimedBlocks:
    """Time blocks of ``repeats`` repeats of ``number`` calls each until one is stable.

    A block is accepted when ``max <= max_ratio * min`` over its repeats. Otherwise
    another block is measured, up to ``max_blocks``; if none is stable, the block with the
    smallest ratio is returned with ``unstable=True``. ``timer`` (seconds) and ``sync``
    (waits for the device) are parameters so that the rule can be checked with a fake clock.
    """
    if repeats < 2:
        raise ValueError(f"a block needs at least 2 repeats to judge its spread, got {repeats}")
    if number < 1 or max_blocks < 1:
        raise ValueError(f"number and max_blocks must be >= 1, got {number} and {max_blocks}")
    if not max_ratio >= 1.0:
        raise ValueError(f"max_ratio must be >= 1 (max <= max_ratio x min), got {max_ratio}")
    best: tuple[float, list[float], list[float] | None] | None = None
    for block in range(1, max_blocks + 1):
        times = []
        for _ in range(repeats):
            t0 = timer()
            for _ in range(number):
                call()
            sync()
            times.append((timer() - t0) / number)
        ratio = block_ratio(times)
        load = load_average()
        if best is None or ratio < best[0]:
            best = (ratio, times, load)
        if ratio <= max_ratio:
            return TimedBlocks(times, number, block, ratio, False, load)
    ratio, times, load = best
    return TimedBlocks(times, number, max_blocks, ratio, True, load)


def _calibrate(
    call: Callable[[], Any],
    min_seconds: float,
    cap: int,
    timer: Callable[[], float],
    sync: Callable[[], None],
) -> int:
    """How many consecutive calls make one repeat last at least ``min_seconds`` (<= cap)."""
    if min_seconds <= 0:
        return 1
    t0 = timer()
    call()
    sync()
    one = timer() - t0
    if one <= 0:
        return cap
    return int(min(cap, max(1, math.ceil(min_seconds / one))))


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


@torch.no_grad()
def measure_latency(
    model: nn.Module,
    img_size: int | tuple[int, int] | None = None,
    batch: int = 1,
    warmup: int = 5,
    repeats: int = 20,
    *,
    number: int | None = None,
    min_repeat_seconds: float = 0.005,
    max_blocks: int = 4,
    max_ratio: float = STABLE_RATIO,
    timer: Callable[[], float] = time.perf_counter,
) -> LatencyResult:
    """Latency of one eval-mode forward pass after ``warmup`` passes, in repeated blocks.

    Each repeat times ``number`` consecutive passes (by default as many as make a repeat
    last ``min_repeat_seconds``, so that timer resolution does not dominate small models)
    and divides by ``number``. A block of ``repeats`` repeats is accepted when its max is
    at most ``max_ratio`` x its min (see :func:`timed_blocks`); the median of the accepted
    block is the figure, and the result carries its spread, the block count, whether it
    is ``unstable`` and the load average.
    """
    if repeats < 2 or warmup < 0:
        raise ValueError(f"repeats must be >= 2 and warmup >= 0, got {repeats} and {warmup}")
    device = _model_device(model)
    was_training = model.training
    model.eval()
    x = torch.randn(_input_shape(model, img_size, batch), device=device)
    try:
        for _ in range(warmup):
            model(x)
        _sync(device)
        sync = lambda: _sync(device)  # noqa: E731
        call = lambda: model(x)  # noqa: E731
        if number is None:
            number = _calibrate(call, min_repeat_seconds, 100, timer, sync)
        timed = timed_blocks(
            call,
            repeats,
            number,
            max_blocks=max_blocks,
            max_ratio=max_ratio,
            timer=timer,
            sync=sync,
        )
    finally:
        model.train(was_training)
    ms = sorted(t * 1e3 for t in timed.times)
    q1, median, q3 = _quartiles(ms)
    return LatencyResult(
        median_ms=median,
        p90_ms=ms[min(len(ms) - 1, int(0.9 * len(ms)))],
        min_ms=ms[0],
        batch=batch,
        warmup=warmup,
        repeats=repeats,
        device=str(device),
        threads=torch.get_num_threads(),
        max_ms=ms[-1],
        q1_ms=q1,
        q3_ms=q3,
        number=timed.number,
        blocks=timed.blocks,
        ratio=timed.ratio,
        max_ratio=max_ratio,
        unstable=timed.unstable,
        load_avg=timed.load_avg,
    )


@torch.no_grad()
def measure_throughput(
    model: nn.Module,
    img_size: int | tuple[int, int] | None = None,
    batch: int = 64,
    warmup: int = 2,
    min_seconds: float = 1.0,
    max_iterations: int = 200,
    *,
    repeats: int = 5,
    number: int | None = None,
    max_blocks: int = 4,
    max_ratio: float = STABLE_RATIO,
    timer: Callable[[], float] = time.perf_counter,
) -> ThroughputResult:
    """Images per second of eval-mode forward passes at ``batch``, after warm-up, in blocks.

    A block is ``repeats`` measurements of ``number`` batches each (by default as many as
    make the block last about ``min_seconds``, at most ``max_iterations`` batches per
    block); it is accepted when stable as in :func:`timed_blocks`.
    """
    if repeats < 2 or warmup < 0:
        raise ValueError(f"repeats must be >= 2 and warmup >= 0, got {repeats} and {warmup}")
    device = _model_device(model)
    was_training = model.training
    model.eval()
    x = torch.randn(_input_shape(model, img_size, batch), device=device)
    try:
        for _ in range(warmup):
            model(x)
        _sync(device)
        sync = lambda: _sync(device)  # noqa: E731
        call = lambda: model(x)  # noqa: E731
        if number is None:
            cap = max(1, max_iterations // repeats)
            number = _calibrate(call, min_seconds / repeats, cap, timer, sync)
        timed = timed_blocks(
            call,
            repeats,
            number,
            max_blocks=max_blocks,
            max_ratio=max_ratio,
            timer=timer,
            sync=sync,
        )
    finally:
        model.train(was_training)
    return throughput_result(timed, batch, device, max_ratio)


def throughput_result(
    timed: TimedBlocks, batch: int, device: torch.device, max_ratio: float
) -> ThroughputResult:
    """Images per second (median and spread) of an accepted block of batches."""
    rates = sorted(batch / t if t > 0 else math.inf for t in timed.times)
    q1, median, q3 = _quartiles(rates)
    return ThroughputResult(
        images_per_s=median,
        batch=batch,
        seconds=sum(timed.times) * timed.number,
        iterations=len(timed.times) * timed.number,
        device=str(device),
        threads=torch.get_num_threads(),
        min_images_per_s=rates[0],
        max_images_per_s=rates[-1],
        q1_images_per_s=q1,
        q3_images_per_s=q3,
        repeats=len(timed.times),
        number=timed.number,
        blocks=timed.blocks,
        ratio=timed.ratio,
        max_ratio=max_ratio,
        unstable=timed.unstable,
        load_avg=timed.load_avg,
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
