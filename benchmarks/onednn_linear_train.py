"""Training speed with the models' nn.Linear layers on oneDNN against PyTorch's own path.

For each model, one process times training steps (forward, cross-entropy, backward, SGD
step; ``archbench.bench.train_speed.measure_train_throughput`` on a copy of the model)
at 32x32, batch 64, with its plain ``nn.Linear`` modules as they are and switched to
``archbench.layers.onednn_linear.OneDNNLinear`` (``onednn_linears``), the two alternating
over ``--rounds`` rounds (order flipped every round). Reports the median images/s of
each, the median of the per-round ratios (oneDNN / plain, > 1: oneDNN faster), and each
step's share of the machine's peak FLOP/s (``measure_peak_flops``, measured once).

Run: ``.venv/bin/python benchmarks/onednn_linear_train.py [MODEL ...] [--rounds 5]
[--threads 1]``. Writes ``benchmarks/results/onednn_linear_train.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import torch
import torch.nn as nn

from archbench.bench import environment
from archbench.bench.train_speed import (
    count_train_flops,
    measure_peak_flops,
    measure_train_throughput,
)
from archbench.layers.onednn_linear import onednn_linears
from archbench.models import create_model

MODELS = ["resnet_pico", "vit_pico", "mixer_pico", "convnext_pico", "caformer_pico"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*", default=MODELS)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=1.5, help="timed seconds per measurement")
    ap.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "onednn_linear_train.json")
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    peak = measure_peak_flops("fp32")
    rows = []
    for name in args.models:
        torch.manual_seed(0)
        model = create_model(name, num_classes=10, img_size=32)
        switched = sum(type(m) is nn.Linear for m in model.modules())  # what the switch takes
        flops = count_train_flops(model, 32)["train_flops_per_image"]
        times: dict[bool, list[float]] = {False: [], True: []}
        ratios = []
        for r in range(args.rounds):
            got = {}
            for flag in (False, True) if r % 2 == 0 else (True, False):
                with onednn_linears(model, flag):
                    res = measure_train_throughput(
                        model, 32, batch=args.batch, min_seconds=args.seconds
                    )
                got[flag] = res.images_per_s
                times[flag].append(res.images_per_s)
            ratios.append(got[True] / got[False])
        plain, dnn = statistics.median(times[False]), statistics.median(times[True])
        row = {
            "model": name,
            "linears_switched": switched,
            "plain_images_per_s": plain,
            "onednn_images_per_s": dnn,
            "ratio_median": statistics.median(ratios),
            "ratio_min_max": [min(ratios), max(ratios)],
            "train_flops_per_image": flops,
            "plain_utilization": plain * flops / peak["flops_per_s"],
            "onednn_utilization": dnn * flops / peak["flops_per_s"],
        }
        rows.append(row)
        print(
            f"{name:<16} {switched:3d} linears  plain {plain:7.1f} img/s "
            f"({100 * row['plain_utilization']:4.1f}%)  oneDNN {dnn:7.1f} img/s "
            f"({100 * row['onednn_utilization']:4.1f}%)  x{row['ratio_median']:.2f} "
            f"[{min(ratios):.2f}, {max(ratios):.2f}]",
            flush=True,
        )
    result = {
        "benchmark": "onednn_linear_train",
        "conditions": {
            "img_size": 32,
            "batch": args.batch,
            "threads": args.threads,
            "rounds": args.rounds,
            "timing": "measure_train_throughput per round, plain and oneDNN alternating",
            "load_average_before": list(load_before),
            "load_average_after": list(os.getloadavg()),
        },
        "peak": peak,
        "environment": environment(),
        "results": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
