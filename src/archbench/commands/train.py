"""`archbench train MODEL --data SPEC --out DIR`: train a registered model with a recipe.

The run folder gets ``model.json`` (model name and the arguments it was built with, the
data spec and seed), so ``archbench eval DIR`` can rebuild the model. Re-running the same
command resumes from the last checkpoint.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from archbench.data import load_dataset
from archbench.models import create_model
from archbench.train import fit, list_recipes, load_recipe
from archbench.train.checkpoint import atomic_write_text

from ._common import print_json


def parse_kv(items: list[str] | None, what: str) -> dict[str, Any]:
    """``key=value`` pairs; values parsed as JSON when they can be (numbers, true, lists)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"{what} must be key=value, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model on a dataset with a recipe (resumable)")
    p.add_argument("model", help="registered model name, e.g. resnet_pico")
    p.add_argument("--data", required=True, help="dataset spec, e.g. shapes or folder:/path")
    p.add_argument(
        "--recipe",
        default="cpu-fast",
        help=f"shipped recipe ({', '.join(list_recipes())}) or a YAML/JSON file",
    )
    p.add_argument("--out", required=True, help="run folder (created; an existing run resumes)")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs")
    p.add_argument(
        "--seed", type=int, help="override the recipe's seed (also seeds the data split)"
    )
    p.add_argument(
        "--data-seed",
        type=int,
        help="seed of the train/val/test split when it should differ from --seed "
        "(a comparison keeps one split for every training seed)",
    )
    p.add_argument("--batch-size", type=int, help="override the recipe's batch size")
    p.add_argument("--lr", type=float, help="override the recipe's learning rate")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="override other recipe fields")
    p.add_argument("--model-arg", nargs="*", metavar="KEY=VALUE", help="extra model arguments")
    p.add_argument("--max-seconds", type=float, help="wall-clock budget for the run")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--fresh", action="store_true", help="start over instead of resuming")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe)
    changes = parse_kv(args.set, "--set")
    for key, value in (
        ("epochs", args.epochs),
        ("seed", args.seed),
        ("batch_size", args.batch_size),
        ("lr", args.lr),
    ):
        if value is not None:
            changes[key] = value
    if changes:
        recipe = recipe.replace(**changes)
    data_seed = recipe.seed if args.data_seed is None else args.data_seed
    data = load_dataset(args.data, seed=data_seed)
    kwargs = dict(
        num_classes=data.num_classes,
        in_chans=data.in_chans,
        img_size=data.img_size,
        drop_rate=recipe.drop_rate,
        drop_path_rate=recipe.drop_path_rate,
    )
    kwargs.update(parse_kv(args.model_arg, "--model-arg"))
    out = Path(args.out)
    info = {"model": args.model, "kwargs": kwargs, "data": args.data, "data_seed": data_seed}
    model_json = out / "model.json"
    if model_json.is_file() and not args.fresh:
        old = json.loads(model_json.read_text())
        if old != info:
            raise ValueError(
                f"{out} holds a run of {old.get('model')} on {old.get('data')!r} with other "
                "settings; use another --out or --fresh"
            )
    torch.manual_seed(recipe.seed)
    model = create_model(args.model, **kwargs)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(model_json, json.dumps(info, indent=2) + "\n")
    res = fit(model, data, recipe, out, resume=not args.fresh, max_seconds=args.max_seconds)
    if args.json:
        print_json(res.to_dict())
    else:
        for r in res.history:
            print(
                f"epoch {r['epoch']:>3}  train loss {r['train_loss']:.4f} acc {r['train_acc']:.4f}  "
                f"val loss {r['val_loss']:.4f} top1 {r['val_top1']:.4f} top5 {r['val_top5']:.4f}  "
                f"{r['images_per_s']:.0f} img/s"
            )
        print(
            f"status {res.status}; best val top-1 {res.best_val_top1} at epoch {res.best_epoch}; "
            f"{res.train_time_s:.1f} s, {res.images_per_s:.0f} img/s, data share "
            f"{100 * res.data_time_share:.1f}%"
        )
        print(f"checkpoints: {res.best_checkpoint}, {res.last_checkpoint}")
    if res.status == "failed_nan":
        print(f"archbench train: error: {res.error}", file=__import__("sys").stderr)
        return 1
    return 0
