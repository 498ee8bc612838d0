"""`archbench eval CHECKPOINT --data SPEC`: evaluate a trained run on a split.

CHECKPOINT is a run folder written by ``archbench train`` (its best checkpoint is used)
or a ``.safetensors`` file inside one; the model is rebuilt from the run's model.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from archbench.data import load_dataset
from archbench.models import create_model
from archbench.train import evaluate, load_checkpoint

from ._common import print_json


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
    p.add_argument("--seed", type=int, help="data seed (default: the run's)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_eval)


def _locate(path: Path, which: str) -> tuple[Path, Path]:
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.is_dir():
        ck = path / "checkpoints" / f"{which}.safetensors"
        run = path
    else:
        ck = path
        run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    if not ck.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(ck)!r}")
    if not (run / "model.json").is_file():
        raise FileNotFoundError(
            f"no model.json in {str(run)!r}: the run folder records which model to build"
        )
    return ck, run


def run_eval(args: argparse.Namespace) -> int:
    ck, run = _locate(Path(args.checkpoint), args.which)
    info = json.loads((run / "model.json").read_text())
    spec = args.data or info["data"]
    data = load_dataset(spec, seed=info.get("data_seed", 0) if args.seed is None else args.seed)
    model = create_model(info["model"], **info["kwargs"])
    meta = load_checkpoint(ck, model)["meta"]
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
            f"top-1 {m['top1']:.4f}  top-5 {m['top5']:.4f}  loss {m['loss']:.4f}"
        )
    return 0
