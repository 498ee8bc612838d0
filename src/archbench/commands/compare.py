"""`archbench compare`: train and measure models under one data, recipe, budget and seed set."""

from __future__ import annotations

import argparse
import sys

from archbench.bench.compare import CompareSpec, run_compare

from ._common import (
    add_model_arg,
    add_task_arg,
    compare_summary,
    model_args_for,
    parse_kv,
    positive_int,
    print_json,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="a fair comparison: same data, recipe, budget and seeds; leaderboard and HTML report",
        description="Train every MODEL with the same data, recipe, budget and seeds, measure them the "
        "same way, and write results.jsonl, leaderboard.md and report.html to --out.",
    )
    p.add_argument("models", nargs="*", metavar="MODEL")
    p.add_argument(
        "--spec",
        help="a YAML file with the same keys as these options (models, data, ...), or the name "
        "of a shipped preset (e.g. kan-vs-mlp-params)",
    )
    p.add_argument(
        "--data", help="dataset spec, e.g. shapes, digits, folder:/path (default shapes)"
    )
    p.add_argument("--recipe", help="recipe name or YAML/JSON file (default cpu-fast)")
    p.add_argument(
        "--budget",
        help="epochs[=N] | time=SECONDS | steps=N | params=N|match:MODEL | flops=N|match:MODEL | "
        "compute=MACS_X_IMAGES|match:MODEL (default: the recipe's epochs; see docs/budgets.md)",
    )
    p.add_argument("--epochs", type=positive_int, help="override the recipe's epochs")
    p.add_argument("--seeds", type=positive_int, help="number of seeds (0..N-1), default 1")
    p.add_argument(
        "--jobs", type=positive_int, help="runs trained in parallel; cores are split between them"
    )
    p.add_argument(
        "--executor",
        choices=("local", "ray"),
        help="where runs train: local processes (default) or a Ray cluster (pip install "
        "archbench[ray]; see docs/comparison.md)",
    )
    p.add_argument(
        "--ray-address",
        metavar="HOST:PORT|auto",
        help="the Ray cluster's head (what `ray start --head` prints); default: a Ray "
        "instance started on this machine",
    )
    p.add_argument(
        "--tune",
        metavar="KEY,KEY",
        help="give every model the same Optuna search over these recipe keys (e.g. "
        "lr,weight_decay) on the validation split; final seeds train with each model's best",
    )
    p.add_argument("--trials", type=positive_int, help="trials per model of --tune (default 8)")
    add_model_arg(p, several_models=True)
    add_task_arg(p)
    p.add_argument("--model-kwargs", help=argparse.SUPPRESS)  # replaced by --model-arg
    p.add_argument(
        "--pretrained",
        action="append",
        metavar="MODEL=FILE|hf-hub:ORG/NAME",
        help="also fine-tune MODEL from these weights: it runs from scratch and from the "
        "weights, as two entries (repeat for several models)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print the leaderboard rows and output paths as JSON (progress goes to stderr)",
    )
    p.add_argument("--out", help="output folder (default runs/compare)")
    p.add_argument(
        "--no-explain", action="store_true", help="leave the Grad-CAM panel out of the report"
    )
    p.add_argument(
        "--remeasure",
        action="store_true",
        help="measure latency, throughput and memory of completed runs again (e.g. on an idle machine)",
    )
    p.set_defaults(func=run)


def spec_from_args(args: argparse.Namespace) -> CompareSpec:
    data: dict = {}
    if args.spec:
        base = _load_spec(args.spec)
        data = base.to_dict()
        if args.models:
            data["models"] = list(args.models)
    else:
        if not args.models:
            raise ValueError("name at least one MODEL, or give --spec FILE")
        data["models"] = list(args.models)
    for key in (
        "data",
        "recipe",
        "budget",
        "epochs",
        "seeds",
        "jobs",
        "executor",
        "ray_address",
        "out",
    ):
        value = getattr(args, key, None)  # a namespace built by hand may lack the newer ones
        if value is not None:
            data[key] = value
    if args.no_explain:
        data["explain"] = False
    tune_keys = getattr(args, "tune", None)
    trials = getattr(args, "trials", None)
    if tune_keys is not None:
        params = [k.strip() for k in tune_keys.split(",") if k.strip()]
        if not params:
            raise ValueError("--tune takes recipe keys separated by commas, e.g. lr,weight_decay")
        data["tune"] = {**(data.get("tune") or {}), "params": params}
    if trials is not None:
        if tune_keys is None and not data.get("tune"):
            raise ValueError("--trials sets the trials of --tune; add --tune lr,weight_decay")
        data["tune"] = {**data["tune"], "trials": trials}
    if args.task is not None:
        data["task"] = args.task
        data["task_args"] = parse_kv(args.task_arg, "--task-arg")
    elif args.task_arg:
        data["task_args"] = {**data.get("task_args", {}), **parse_kv(args.task_arg, "--task-arg")}
    if args.model_kwargs is not None:
        raise ValueError(
            "--model-kwargs was replaced by --model-arg KEY=VALUE (every model) or "
            "--model-arg MODEL:KEY=VALUE (one model)"
        )
    if args.model_arg:
        given = model_args_for(args.model_arg, data["models"])
        merged = {m: dict(kw) for m, kw in (data.get("model_kwargs") or {}).items()}
        for model, kwargs in given.items():
            if kwargs:
                merged.setdefault(model, {}).update(kwargs)
        data["model_kwargs"] = merged
    for item in getattr(args, "pretrained", None) or []:
        model, sep, source = item.partition("=")
        if not sep or not model or not source:
            raise ValueError(f"--pretrained takes MODEL=FILE|hf-hub:ORG/NAME, got {item!r}")
        data.setdefault("pretrained", {})[model] = source
    return CompareSpec.from_dict(data)


def _load_spec(spec: str) -> CompareSpec:
    """A spec file path, or else the name of a shipped preset."""
    from pathlib import Path

    from archbench.bench.presets import list_presets, load_preset

    if Path(spec).is_file():
        return CompareSpec.from_file(spec)
    if spec in list_presets():
        return load_preset(spec)
    raise ValueError(
        f"--spec {spec!r} is neither a file nor a preset; presets: {', '.join(list_presets())}"
    )


def run(args: argparse.Namespace) -> int:
    spec = spec_from_args(args)
    if args.json:  # stdout holds the JSON alone
        result = run_compare(spec, remeasure=args.remeasure, log=_to_stderr)
        print_json(compare_summary(result))
        return 0
    result = run_compare(spec, remeasure=args.remeasure)
    print()
    print(result["leaderboard"])
    print(f"\nleaderboard: {result['out'] / 'leaderboard.md'}")
    print(f"report:      {result['report']}")
    print(f"results:     {result['out'] / 'results.jsonl'}")
    print(f"wall-clock:  {result['elapsed_s']:.0f} s")
    return 0


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr)
