"""Time the chunked selective scan against the sequential reference.

Forward and forward+backward, float32, one thread by default, at the sequence lengths a
32x32 input gives (64 tokens at patch 4, 256 at patch 2) and a 224x224 input gives (196
at patch 16, 3136 at patch 4). Writes benchmarks/results/selective_scan.json.

    .venv/bin/python benchmarks/selective_scan.py [--threads 1] [--repeats 5] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from functools import partial
from pathlib import Path

import torch

from archbench.layers.ssm import selective_scan, selective_scan_ref

# (batch, d_inner, d_state, length, what it stands for)
CASES = [
    (32, 96, 8, 64, "32x32 input, patch 4 (plainmamba_pico-sized, 4 paths folded in batch)"),
    (8, 128, 16, 256, "32x32 input, patch 2"),
    (8, 384, 16, 196, "224x224 input, patch 16 (PlainMamba-L1 width)"),
    (1, 192, 16, 3136, "224x224 input, patch 4 (VMamba-T first stage width)"),
]


def _inputs(b: int, d: int, n: int, length: int, grad: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    args = dict(
        u=torch.randn(b, d, length, generator=g),
        delta=torch.randn(b, d, length, generator=g) - 2.0,
        A=-torch.exp(torch.log(torch.arange(1, n + 1.0))).repeat(d, 1),
        B=torch.randn(b, n, length, generator=g),
        C=torch.randn(b, n, length, generator=g),
        D=torch.ones(d),
    )
    if grad:
        for k in ("u", "delta", "B", "C"):
            args[k].requires_grad_()
    return args


def _time(fn, args: dict, backward: bool, repeats: int) -> float:
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        y = fn(**args, delta_softplus=True)
        if backward:
            y.sum().backward()
        if i:  # the first call is warm-up
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="skip the 3136-token case")
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    records = []
    for b, d, n, length, what in CASES:
        if opts.quick and length > 1000:
            continue
        rec = dict(batch=b, d_inner=d, d_state=n, length=length, case=what)
        for mode in ("forward", "forward_backward"):
            bwd = mode == "forward_backward"
            args = _inputs(b, d, n, length, bwd)
            reps = opts.repeats if length <= 1000 else max(1, opts.repeats // 2)
            ref = _time(selective_scan_ref, args, bwd, reps)
            fast = _time(selective_scan, args, bwd, reps)
            exact = _time(partial(selective_scan, exact=True), args, bwd, reps)
            rec[f"{mode}_ref_s"] = ref
            rec[f"{mode}_chunked_s"] = fast
            rec[f"{mode}_speedup"] = ref / fast
            rec[f"{mode}_exact_s"] = exact  # float64 chunks of 32, no effective floor
            rec[f"{mode}_exact_speedup"] = ref / exact
        records.append(rec)
        print(
            f"L={length:5d} B={b:3d} D={d:4d} N={n:3d}  fwd {rec['forward_ref_s'] * 1e3:8.1f} -> "
            f"{rec['forward_chunked_s'] * 1e3:8.1f} ms (x{rec['forward_speedup']:.2f})  "
            f"fwd+bwd {rec['forward_backward_ref_s'] * 1e3:8.1f} -> "
            f"{rec['forward_backward_chunked_s'] * 1e3:8.1f} ms "
            f"(x{rec['forward_backward_speedup']:.2f})  exact fwd "
            f"{rec['forward_exact_s'] * 1e3:8.1f} ms (x{rec['forward_exact_speedup']:.2f})"
        )
    env = dict(
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        cpu=platform.processor() or platform.machine(),
        cpu_count=os.cpu_count(),
        dtype="float32",
        chunk_size=16,
        exact="selective_scan(exact=True): float64 chunks of 32 steps",
        timing=f"median of {opts.repeats} after one warm-up call",
    )
    out = Path(__file__).parent / "results" / "selective_scan.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(environment=env, results=records), indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
