"""Before/after figures of a compressed model, measured the same way as the original.

Accuracy with ``archbench.train.evaluate``; parameters, MACs, latency and throughput with
``archbench.bench.measure``; file size as the bytes of a safetensors file of the weights.
A quantized graph's multiply-adds are those of its float model (oneDNN's int8 operators are
invisible to the FLOP counter), its parameters are the elements of its weight tensors, and
its file holds int8 weights with their scales.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import save_file

from archbench.bench.measure import (
    count_flops,
    environment,
    measure_latency,
    measure_throughput,
)
from archbench.train.evaluate import evaluate

from .quantize import QuantizedModel

__all__ = ["file_size_bytes", "measure_compressed", "speedups"]


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    if isinstance(model, QuantizedModel):
        return model.weight_tensors()
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for k, v in model.state_dict().items():
        if v.data_ptr() in seen and v.numel():  # tied weights are stored once
            continue
        seen.add(v.data_ptr())
        out[k] = v.detach().contiguous().clone()
    return out


def file_size_bytes(model: nn.Module) -> int:
    """Bytes of a safetensors file holding the model's weights (int8 ones for int8 graphs)."""
    fd, path = tempfile.mkstemp(suffix=".safetensors")
    os.close(fd)
    try:
        save_file(_weights(model), path)
        return os.path.getsize(path)
    finally:
        os.unlink(path)


def _param_count(model: nn.Module) -> int:
    if isinstance(model, QuantizedModel):
        return sum(
            t.numel() for t in model.weight_tensors().values() if t.dtype in (torch.int8,)
        ) + sum(
            t.numel() for k, t in model.weight_tensors().items() if k.endswith("bias") and t.ndim
        )
    return sum(p.numel() for p in model.parameters())


def measure_compressed(
    model: nn.Module,
    data: Any,
    img_size: tuple[int, int],
    *,
    split: str = "test",
    batch: int = 64,
    latency_repeats: int = 20,
    throughput_seconds: float = 1.0,
    macs_of: nn.Module | None = None,
    per_sample: bool = False,
) -> dict[str, Any]:
    """Accuracy (on ``split``, when ``data`` is given), params, MACs, file size, latency
    (batch 1, median) and throughput (images/s at ``batch``); ``macs_of``: the float model
    whose MACs stand for an int8 graph's. ``per_sample``: also ``correct``, the per-image
    top-1 hits packed as :func:`archbench.bench.stats.pack_correct` does."""
    model.eval()
    record: dict[str, Any] = {}
    if data is not None:
        m = evaluate(model, data, split=split, batch_size=256, per_sample=per_sample)
        record.update(top1=m["top1"], top5=m["top5"], loss=m["loss"], n=m["n"], split=split)
        if per_sample:
            from archbench.bench.stats import pack_correct

            record["correct"] = pack_correct(m["correct"].numpy())
    record["params"] = _param_count(model)
    record["macs"] = count_flops(macs_of if macs_of is not None else model, img_size)["macs"]
    record["file_bytes"] = file_size_bytes(model)
    lat = measure_latency(model, img_size, batch=1, repeats=latency_repeats)
    record["latency_ms"] = lat.median_ms
    record["latency"] = lat.to_dict()
    thr = measure_throughput(model, img_size, batch=batch, min_seconds=throughput_seconds)
    record["throughput"] = thr.images_per_s
    record["throughput_detail"] = thr.to_dict()
    record["environment"] = environment("cpu")
    return record


def speedups(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """Ratios after/before (MACs, params, bytes) and before/after (latency) and the
    throughput gain: the measured speed-up beside the counted one."""
    out = {}
    for key in ("params", "macs", "file_bytes"):
        if before.get(key):
            out[f"{key}_ratio"] = after[key] / before[key]
    if after.get("latency_ms"):
        out["latency_speedup"] = before["latency_ms"] / after["latency_ms"]
    if before.get("throughput"):
        out["throughput_speedup"] = after["throughput"] / before["throughput"]
    if before.get("macs") and after.get("macs"):
        out["macs_speedup"] = before["macs"] / after["macs"]
    return out
