"""`archbench bench`: measure models the same way, side by side."""

from __future__ import annotations

import argparse
import json

import torch

from archbench.bench import environment, measure_model
from archbench.models import create_model, get_model_card

from ._common import (
    add_model_arg,
    check_writable_file,
    format_table,
    model_args_for,
    positive_int,
    print_json,
    progress,
)

COLUMNS = [
    ("model", "model"),
    ("img", "img"),
    ("params_m", "params (M)"),
    ("gmacs", "GMACs"),
    ("latency_ms", "latency b1 (ms)"),
    ("throughput", "img/s"),
    ("peak_memory_mb", "peak mem (MB)"),
]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure params, MACs, latency, throughput and memory")
    p.add_argument("models", nargs="+", metavar="MODEL")
    p.add_argument(
        "--img-size",
        type=positive_int,
        help="input size; models are built for it (default: each card's)",
    )
    p.add_argument(
        "--batch",
        type=positive_int,
        default=64,
        help="batch for throughput and memory (default 64)",
    )
    p.add_argument("--threads", type=positive_int, help="torch threads (default: torch's choice)")
    p.add_argument(
        "--repeats", type=positive_int, default=20, help="timed latency passes after warm-up"
    )
    add_model_arg(p, several_models=True)
    p.add_argument("--json", action="store_true", help="print JSON records instead of a table")
    p.add_argument("--out", help="also write the JSON records to this file")
    p.set_defaults(func=run_bench)


def bench_models(
    names: list[str],
    img_size: int | None,
    batch: int,
    repeats: int = 20,
    throughput_seconds: float = 1.0,
    model_kwargs: dict[str, dict] | None = None,
) -> list[dict]:
    """Measure every model in ``names``, built with its ``model_kwargs`` (and ``img_size``)."""
    for name in names:  # validate every name before measuring any
        get_model_card(name)
    if batch < 1:
        raise ValueError(f"--batch must be >= 1, got {batch}")
    if img_size is not None and img_size < 1:
        raise ValueError(f"--img-size must be >= 1, got {img_size}")
    kwargs_of = {}
    for name in names:
        kwargs = dict((model_kwargs or {}).get(name, {}))
        if img_size is not None:  # models with a fixed token grid are built for the size
            kwargs.setdefault("img_size", img_size)
        with torch.device("meta"):  # a bad argument fails here, before anything is timed
            create_model(name, **kwargs)
        kwargs_of[name] = kwargs
    records = []
    for name in progress(names, desc="bench"):
        torch.manual_seed(0)
        model = create_model(name, **kwargs_of[name])
        rec = measure_model(
            model,
            img_size,
            batch=batch,
            latency_repeats=repeats,
            throughput_seconds=throughput_seconds,
        )
        rec["model"] = name
        if kwargs_of[name]:
            rec["model_kwargs"] = kwargs_of[name]
        records.append(rec)
    return records


def _rows(records: list[dict]) -> list[dict]:
    return [
        {
            "model": r["model"],
            "img": r["img_size"][0],
            "params_m": r["params"] / 1e6,
            "gmacs": r["macs"] / 1e9,
            "latency_ms": r["latency_ms"],
            "throughput": r["throughput"],
            "peak_memory_mb": r.get("peak_memory_mb"),
        }
        for r in records
    ]


def print_bench_table(records: list[dict], batch: int) -> None:
    env = environment()
    print(format_table(_rows(records), COLUMNS))
    print(
        f"\nCPU {env['cpu']}, {env['threads']} threads, torch {env['torch']}; latency: batch 1, "
        f"median of timed passes after warm-up; throughput and peak memory: batch {batch}, eval mode."
    )


def run_bench(args: argparse.Namespace) -> int:
    check_writable_file(args.out, "--out")
    kwargs = model_args_for(args.model_arg, args.models)
    if args.threads:
        torch.set_num_threads(args.threads)
    records = bench_models(
        args.models, args.img_size, args.batch, args.repeats, model_kwargs=kwargs
    )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(records, f, indent=2)
    if args.json:
        print_json(records)
    else:
        print_bench_table(records, args.batch)
    return 0
