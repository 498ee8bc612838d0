"""`archbench main`: the default job, runnable with no data or options.

It benchmarks one CPU-scale model of each kind at 32x32 and prints the table.
"""

from __future__ import annotations

import argparse

from archbench.models import list_models

from .bench import bench_models, print_bench_table

# One CPU-scale model per kind, in the order they are shown.
DEFAULT_MODELS = ["resnet_pico", "convnext_pico", "vit_pico", "mixer_pico", "caformer_pico"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("main", help="the default job: benchmark one CPU-scale model of each kind")
    p.add_argument("--batch", type=int, default=64)
    p.set_defaults(func=run_main)


def run_main(args: argparse.Namespace) -> int:
    available = set(list_models())
    names = [n for n in DEFAULT_MODELS if n in available]
    print(f"Benchmarking {len(names)} CPU-scale models at 32x32: {', '.join(names)}")
    records = bench_models(names, 32, args.batch)
    print_bench_table(records, args.batch)
    return 0
