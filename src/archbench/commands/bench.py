"""`archbench bench`: measure models the same way, side by side."""

from __future__ import annotations

import argparse
import json

import torch

from archbench.allocator import retain_freed_memory
from archbench.bench import environment, measure_latency, measure_model, measure_throughput
from archbench.bench.train_speed import (
    count_train_flops,
    measure_peak_flops,
    measure_train_throughput,
    train_utilization,
)
from archbench.layers.onednn_linear import onednn_linears
from archbench.models import create_model, get_model_card
from archbench.optimize import optimize

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
    p.add_argument(
        "--optimized",
        action="store_true",
        help="also time archbench.optimize(model) (BN folded, reparameterized, channels_last), "
        "measured the same way, beside eager",
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="with --optimized: int8 linear layers (int8 weights, activations quantized per "
        "call; outputs within optimize's looser int8 tolerance), opt-in",
    )
    p.add_argument(
        "--train",
        action="store_true",
        help="also time training steps (forward, backward, SGD) at --batch and report the "
        "step's FLOP/s as a share of this machine's fp32 peak (matrix multiply or 1x1 conv)",
    )
    p.add_argument(
        "--onednn-linear",
        action="store_true",
        help="with --train: the models' nn.Linear layers train on oneDNN (the recipe option "
        "onednn_linear), opt-in",
    )
    p.add_argument(
        "--retain-heap",
        action="store_true",
        help="keep the memory freed tensors leave in the process (glibc malloc: no mmap, no "
        "trim) so that later passes take no page faults; process-wide, for every model and "
        "variant of the run (archbench.allocator.retain_freed_memory)",
    )
    p.add_argument("--out", help="also write the JSON records to this file")
    p.set_defaults(func=run_bench)


def bench_models(
    names: list[str],
    img_size: int | None,
    batch: int,
    repeats: int = 20,
    throughput_seconds: float = 1.0,
    model_kwargs: dict[str, dict] | None = None,
    optimized: bool = False,
    train: bool = False,
    int8: bool = False,
    onednn_linear: bool = False,
) -> list[dict]:
    """Measure every model in ``names``, built with its ``model_kwargs`` (and ``img_size``).

    With ``optimized``, ``archbench.optimize(model)`` is timed too, by the same functions
    and settings, under the record's ``optimized`` key (or the reason it was refused);
    ``int8`` adds ``int8_linear=True`` to that call.
    With ``train``, training steps are timed at ``batch`` and their counted FLOPs set
    against the machine's fp32 dense-product peak (``measure_peak_flops``, measured
    once), under the ``train`` key; ``onednn_linear`` times them with the models'
    ``nn.Linear`` layers on oneDNN (``archbench.layers.onednn_linear.onednn_linears``).
    """
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
    peak = measure_peak_flops("fp32") if train else None
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
        if optimized:
            rec["optimized"] = _measure_optimized(
                model, rec, batch, repeats, throughput_seconds, int8
            )
        if peak is not None:
            rec["train"] = _measure_train(
                model, rec, batch, throughput_seconds, peak, onednn_linear
            )
        records.append(rec)
    return records


def _measure_optimized(
    model: torch.nn.Module,
    rec: dict,
    batch: int,
    repeats: int,
    throughput_seconds: float,
    int8: bool = False,
) -> dict:
    """Latency and throughput of ``optimize(model)``, as ``measure_model`` takes them."""
    h, w = rec["img_size"]
    example = torch.randn(2, getattr(model, "in_chans", 3), h, w)
    try:
        fast = optimize(model, example_input=example, int8_linear=int8)
    except ValueError as err:
        return {"refused": str(err)}
    lat = measure_latency(fast, (h, w), batch=1, repeats=repeats)
    thr = measure_throughput(fast, (h, w), batch=batch, min_seconds=throughput_seconds)
    return {
        "latency_ms": lat.median_ms,
        "latency": lat.to_dict(),
        "throughput": thr.images_per_s,
        "throughput_detail": thr.to_dict(),
        "latency_speedup": rec["latency_ms"] / lat.median_ms,
        "throughput_speedup": thr.images_per_s / rec["throughput"],
        "steps": fast.optimize_report["steps"],
        "max_abs_diff": fast.optimize_report["max_abs_diff"],
        "tolerance": fast.optimize_report["tolerance"],
    }


def _measure_train(
    model: torch.nn.Module,
    rec: dict,
    batch: int,
    seconds: float,
    peak: dict,
    onednn_linear: bool = False,
) -> dict:
    """Training images/s at ``batch``, the step's FLOPs and its share of the machine's peak.

    With ``onednn_linear`` the steps run with the model's ``nn.Linear`` layers on oneDNN;
    the FLOPs are counted on the plain model (the counter does not know oneDNN's op)."""
    h, w = rec["img_size"]
    if batch < 2:
        return {"refused": "a training step needs --batch >= 2 (batch statistics)"}
    with onednn_linears(model, onednn_linear) as switched:
        thr = measure_train_throughput(model, (h, w), batch=batch, min_seconds=seconds)
    flops = count_train_flops(model, (h, w))
    util = train_utilization(thr.images_per_s, flops["train_flops_per_image"], peak["flops_per_s"])
    out = {
        "images_per_s": thr.images_per_s,
        "detail": thr.to_dict(),
        **flops,
        **util,
        "peak_flops_per_s": peak["flops_per_s"],
        "peak": peak,
    }
    if onednn_linear:
        out["onednn_linears"] = switched
    return out


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
            "opt_latency_ms": r.get("optimized", {}).get("latency_ms"),
            "opt_throughput": r.get("optimized", {}).get("throughput"),
            "opt_speedup": r.get("optimized", {}).get("throughput_speedup"),
            "train_ips": r.get("train", {}).get("images_per_s"),
            "train_gflops": r.get("train", {}).get("train_flops_per_s", 0) / 1e9 or None,
            "train_util": 100 * r["train"]["utilization"]
            if "utilization" in r.get("train", {})
            else None,
        }
        for r in records
    ]


def print_bench_table(records: list[dict], batch: int) -> None:
    env = environment()
    columns = list(COLUMNS)
    if any("optimized" in r for r in records):
        columns += [
            ("opt_latency_ms", "optimized latency b1 (ms)"),
            ("opt_throughput", "optimized img/s"),
            ("opt_speedup", "img/s speed-up"),
        ]
    if any("train" in r for r in records):
        columns += [
            ("train_ips", "train img/s"),
            ("train_gflops", "train GFLOP/s"),
            ("train_util", "of peak FLOP/s (%)"),
        ]
    print(format_table(_rows(records), columns))
    for r in records:
        if "refused" in r.get("optimized", {}):
            print(f"{r['model']}: optimize refused: {r['optimized']['refused']}")
        if "refused" in r.get("train", {}):
            print(f"{r['model']}: training not timed: {r['train']['refused']}")
    peaks = [r["train"]["peak"] for r in records if "peak" in r.get("train", {})]
    if peaks:
        print(
            f"training: forward + backward + SGD step at batch {batch}; FLOPs counted "
            f"(matmul, conv, attention); peak {peaks[0]['flops_per_s'] / 1e9:.0f} GFLOP/s "
            f"(fp32, the faster of {peaks[0]['n']}x{peaks[0]['n']} torch.mm at "
            f"{peaks[0]['kernels']['mm'] / 1e9:.0f} and a {peaks[0]['conv_channels']}-channel "
            f"1x1 convolution at {peaks[0]['kernels']['conv1x1'] / 1e9:.0f})."
            + (
                " nn.Linear layers trained on oneDNN (--onednn-linear)."
                if any("onednn_linears" in r.get("train", {}) for r in records)
                else ""
            )
        )
    print(
        f"\nCPU {env['cpu']}, {env['threads']} threads, torch {env['torch']}; latency: batch 1, "
        f"median of timed passes after warm-up; throughput and peak memory: batch {batch}, eval mode."
        + (" Freed memory retained (--retain-heap)." if env.get("freed_memory_retained") else "")
    )


def run_bench(args: argparse.Namespace) -> int:
    check_writable_file(args.out, "--out")
    kwargs = model_args_for(args.model_arg, args.models)
    if args.int8 and not args.optimized:
        raise ValueError("--int8 chooses what --optimized times; pass --optimized too")
    if args.onednn_linear and not args.train:
        raise ValueError("--onednn-linear chooses how --train trains; pass --train too")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.retain_heap:
        retained = retain_freed_memory()
        if not retained["applied"]:
            raise ValueError(f"--retain-heap: {retained['reason']}")
    records = bench_models(
        args.models,
        args.img_size,
        args.batch,
        args.repeats,
        model_kwargs=kwargs,
        optimized=args.optimized,
        train=args.train,
        int8=args.int8,
        onednn_linear=args.onednn_linear,
    )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(records, f, indent=2)
    if args.json:
        print_json(records)
    else:
        print_bench_table(records, args.batch)
    return 0
