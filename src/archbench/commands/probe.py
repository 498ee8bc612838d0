"""`archbench probe RUN --data SPEC [--kind linear|knn|both]`: evaluate a pretrained encoder.

RUN is a run folder written by ``archbench pretrain`` (a self-supervised method). Its
encoder is frozen and measured with the linear and/or k-NN probe of
:mod:`archbench.ssl.probe`; the probes' hyper-parameters are chosen on a validation part
carved from the training split, and the evaluation split is read once, at the end.
Prints JSON (accuracies as fractions).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._common import non_negative_int, positive_float, positive_int, print_json


def _float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, e.g. 1e-4,1e-3, got {text!r}"
        ) from None
    if not values or any(not v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, e.g. 5,20, got {text!r}"
        ) from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("probe", help="linear / k-NN probe of a pretrained encoder (JSON out)")
    p.add_argument("run", help="run folder from `archbench pretrain`")
    p.add_argument("--data", help="dataset spec (default: the one the run was trained on)")
    p.add_argument("--kind", default="both", choices=["linear", "knn", "both"])
    p.add_argument("--split", default="test", choices=["test", "val"], help="evaluation split")
    p.add_argument(
        "--which", default="best", choices=["best", "last"], help="checkpoint of the run"
    )
    p.add_argument("--layer", type=int, help="probe forward_intermediates output LAYER instead")
    p.add_argument("--weight-decays", type=_float_list, help="linear probe candidates")
    p.add_argument("--ks", type=_int_list, help="k-NN probe candidates, e.g. 5,20,50")
    p.add_argument(
        "--val-fraction", type=positive_float, default=0.2, help="share of train carved off"
    )
    p.add_argument("--seed", type=non_negative_int, help="data seed (default: the run's)")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--threads", type=positive_int, help="torch threads")
    p.add_argument("--out", help="also write the JSON to this file")
    p.set_defaults(func=run_probe)


def load_pretrained(run: str | Path, which: str = "best"):
    """The encoder of a pretraining run (eval mode) and the run's model.json + recipe.

    Fails when ``run`` holds no checkpoint or was not trained by a self-supervised method.
    """
    from archbench.runs import load_trained, locate_checkpoint
    from archbench.ssl.base import ssl_methods
    from archbench.train.checkpoint import read_checkpoint_meta

    path = Path(run)
    if not path.exists():
        raise FileNotFoundError(
            f"run {str(run)!r} does not exist; pretrain one with `archbench pretrain MODEL "
            "--method M --data SPEC --out DIR`"
        )
    try:
        ck, folder = locate_checkpoint(path, which)
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"{err}; {str(run)!r} holds no pretrained encoder (run `archbench pretrain` into it)"
        ) from None
    meta = read_checkpoint_meta(ck)
    recipe = meta.get("recipe") or {}
    task = recipe.get("task", "classification") if isinstance(recipe, dict) else None
    if task not in ssl_methods():
        raise ValueError(
            f"{str(run)!r} was trained with task {task!r}, not a self-supervised method, so it "
            "holds no pretrained encoder; probe a run of `archbench pretrain` "
            f"(methods: {', '.join(ssl_methods())})"
        )
    model, info = load_trained(ck)
    return model, {
        **info,
        "task": task,
        "task_args": recipe.get("task_args", {}),
        "checkpoint": str(ck),
    }


def run_probe(args: argparse.Namespace) -> int:
    import torch

    from archbench.data import load_dataset
    from archbench.ssl.probe import DEFAULT_KS, DEFAULT_WEIGHT_DECAYS, probe

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.out:
        from ._common import check_writable_file

        check_writable_file(args.out, "--out")
    if not 0 < args.val_fraction < 1:
        raise ValueError(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    model, info = load_pretrained(args.run, args.which)
    spec = args.data or info["data"]
    seed = info.get("data_seed", 0) if args.seed is None else args.seed
    data = load_dataset(spec, seed=seed)
    if data.in_chans != model.in_chans:
        raise ValueError(
            f"the encoder takes {model.in_chans} channel(s) but {spec!r} has {data.in_chans}; "
            "probe on data like the pretraining data"
        )
    result = probe(
        model,
        data,
        kind=args.kind,
        split=args.split,
        layer=args.layer,
        val_fraction=args.val_fraction,
        weight_decays=args.weight_decays or DEFAULT_WEIGHT_DECAYS,
        ks=args.ks or DEFAULT_KS,
        seed=seed,
        batch_size=args.batch_size,
    )
    out = {
        "run": str(args.run),
        "model": info["model"],
        "method": info["task"],
        "method_args": info["task_args"],
        "checkpoint": info["checkpoint"],
        "data": spec,
        **result,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print_json(out)
    return 0
