"""Measurement (params, FLOPs, latency, throughput, memory) and, later, comparison."""

from .measure import (
    count_flops,
    count_params,
    environment,
    measure_latency,
    measure_model,
    measure_peak_memory,
    measure_throughput,
)

__all__ = [
    "count_flops",
    "count_params",
    "environment",
    "measure_latency",
    "measure_model",
    "measure_peak_memory",
    "measure_throughput",
]
