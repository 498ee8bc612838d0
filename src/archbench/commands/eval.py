"""`archbench eval CHECKPOINT --data SPEC`: evaluate a trained run on a split.

CHECKPOINT is a run folder written by ``archbench train`` (its best checkpoint is used)
or a ``.safetensors`` file inside one; the model is rebuilt from the run's model.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from archbench.data import load_dataset
from archbench.runs import build_run_model, locate_checkpoint
from archbench.train import check_model_data, evaluate, load_checkpoint

from ._common import non_negative_int, pct, positive_int, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a trained checkpoint: top-1, top-5, loss")
    p.add_argument(
        "checkpoint", help="run folder from `archbench train`, or a .safetensors file in one"
    )
    p.add_argument("--data", help="dataset spec (default: the one the run was trained on)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument(
        "--which", default="best", choices=["best", "last"], help="checkpoint of a run folder"
    )
    p.add_argument("--seed", type=non_negative_int, help="data seed (default: the run's)")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--json", action="store_true", help="print JSON (accuracies as fractions)")
    p.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    ck, run = locate_checkpoint(Path(args.checkpoint), args.which)
    info = json.loads((run / "model.json").read_text())
    spec = args.data or info["data"]
    data = load_dataset(spec, seed=info.get("data_seed", 0) if args.seed is None else args.seed)
    model = build_run_model(info)  # a compressed run: its pruned structure too
    meta = load_checkpoint(ck, model)["meta"]
    check_model_data(model, data)  # another --data must have the run's channels and classes
    m = evaluate(model, data, split=args.split, batch_size=args.batch_size)
    result = {
        "checkpoint": str(ck),
        "model": info["model"],
        "data": spec,
        "split": args.split,
        "epoch": meta.get("epoch", meta.get("state", {}).get("epoch")),
        **m,
    }
    if args.json:
        print_json(result)
    else:
        print(
            f"{info['model']} ({ck.name}, epoch {result['epoch']}) on {spec} [{args.split}, n={m['n']}]: "
            f"top-1 {pct(m['top1'])}  top-5 {pct(m['top5'])}  loss {m['loss']:.4f}"
        )
    return 0
