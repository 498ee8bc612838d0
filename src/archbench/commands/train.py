"""`archbench train MODEL --data SPEC --out DIR`: train a registered model with a recipe.

The run folder gets ``model.json`` (model name and the arguments it was built with, the
data spec and seed), so ``archbench eval DIR`` can rebuild the model. Re-running the same
command resumes from the last checkpoint.

Under ``torchrun --nproc_per_node=N -m archbench train ...`` the same arguments train
with N processes (DistributedDataParallel): the recipe's batch size is the effective
batch, split evenly over the processes; only rank 0 writes files and prints.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from archbench.data import load_dataset
from archbench.models import create_model, get_model_card
from archbench.train import create_task, fit, list_recipes, load_recipe
from archbench.train.checkpoint import atomic_write_text
from archbench.train.distributed import check_sync_batchnorm, env_ranks, per_rank_batch
from archbench.train.engine import resolve_device

from ._common import (
    add_model_arg,
    add_task_arg,
    model_args_for,
    non_negative_int,
    parse_kv,
    pct,
    positive_float,
    positive_int,
    print_json,
    task_changes,
)


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
    p.add_argument("--epochs", type=positive_int, help="override the recipe's epochs")
    p.add_argument(
        "--seed",
        type=non_negative_int,
        help="override the recipe's seed (also seeds the data split)",
    )
    p.add_argument(
        "--data-seed",
        type=non_negative_int,
        help="seed of the train/val/test split when it should differ from --seed "
        "(a comparison keeps one split for every training seed)",
    )
    p.add_argument("--batch-size", type=positive_int, help="override the recipe's batch size")
    p.add_argument("--lr", type=positive_float, help="override the recipe's learning rate")
    p.add_argument(
        "--set",
        action="extend",
        nargs="+",
        metavar="KEY=VALUE",
        help="override other recipe fields (repeat the flag or list several)",
    )
    add_model_arg(p)
    p.add_argument(
        "--pretrained",
        metavar="FILE|hf-hub:ORG/NAME",
        help="start from these weights (a .safetensors file with archbench's or timm's names, "
        "or a Hugging Face hub name from the local cache); a head for another number of "
        "classes is re-initialized",
    )
    add_task_arg(p)
    p.add_argument("--max-seconds", type=positive_float, help="wall-clock budget for the run")
    p.add_argument("--threads", type=positive_int, help="torch threads (default: torch's choice)")
    p.add_argument(
        "--device",
        default="cpu",
        metavar="cpu|cuda|cuda:N|mps|auto",
        help="where to train (default cpu; auto picks cuda, then mps, then cpu); the "
        "recipe's precision, channels_last and compile (--set) choose the rest",
    )
    p.add_argument(
        "--sync-bn",
        action="store_true",
        help="under torchrun, synchronize BatchNorm statistics over the processes "
        "(SyncBatchNorm; CUDA only)",
    )
    p.add_argument("--fresh", action="store_true", help="start over instead of resuming")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    get_model_card(args.model)  # an unknown name fails before any data is loaded
    model_args = model_args_for(args.model_arg, [args.model])[args.model]
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ValueError(f"--out {args.out} exists and is not a folder")
    if args.pretrained is not None:
        from archbench.models.pretrained import resolve_pretrained

        resolve_pretrained(args.pretrained)  # a missing or pickled file fails before the data
    device = resolve_device(args.device)  # a GPU that is not there fails before the data
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
    changes.update(task_changes(args, recipe))
    if changes:
        recipe = recipe.replace(**changes)
    if recipe.precision == "fp16" and device.type != "cuda":
        raise ValueError(
            f"precision fp16 needs --device cuda (a gradient scaler on a GPU); on {device.type} "
            "use --set precision=bf16 or precision=fp32"
        )
    rank, world, _ = env_ranks()
    if world > 1:  # under torchrun: an effective batch the processes cannot share fails here
        per_rank_batch(recipe.batch_size, world)
        if args.sync_bn:
            check_sync_batchnorm(device)
    data_seed = recipe.seed if args.data_seed is None else args.data_seed
    data = load_dataset(args.data, seed=data_seed)
    kwargs = dict(
        num_classes=data.num_classes,
        in_chans=data.in_chans,
        img_size=data.img_size,
        drop_rate=recipe.drop_rate,
        drop_path_rate=recipe.drop_path_rate,
    )
    kwargs.update(model_args)
    out = Path(args.out)
    info = {"model": args.model, "kwargs": kwargs, "data": args.data, "data_seed": data_seed}
    if args.pretrained is not None:
        info["pretrained"] = args.pretrained
    model_json = out / "model.json"
    if model_json.is_file() and not args.fresh:
        old = json.loads(model_json.read_text())
        if old != info:
            raise ValueError(
                f"{out} holds a run of {old.get('model')} on {old.get('data')!r} with other "
                "settings; use another --out or --fresh"
            )
    torch.manual_seed(recipe.seed)
    model = create_model(args.model, pretrained=args.pretrained, **kwargs)
    task = create_task(recipe.task, recipe.task_args)
    task.check(model, data)  # before anything is written: a bad run leaves no model.json
    if rank == 0:  # under torchrun only rank 0 writes files
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(model_json, json.dumps(info, indent=2) + "\n")
    res = fit(
        model,
        data,
        recipe,
        out,
        task=task,
        resume=not args.fresh,
        max_seconds=args.max_seconds,
        device=device,
        sync_bn=args.sync_bn,
    )
    if rank > 0:  # rank 0 reports for every process
        return 1 if res.status == "failed_nan" else 0
    if args.json:
        print_json(res.to_dict())
    else:
        for r in res.history:
            print(f"epoch {r['epoch']:>3}  " + _epoch_line(r))
        best = (
            f"best val top-1 {pct(res.best_val_top1)}"
            if res.monitor == "val_top1"
            else f"best {res.monitor} {_num(res.best_metric)}"
        )
        print(
            f"status {res.status}; {best} at epoch {res.best_epoch}; "
            f"{res.train_time_s:.1f} s, {res.images_per_s:.0f} img/s, data share "
            f"{100 * res.data_time_share:.1f}%"
        )
        print(f"checkpoints: {res.best_checkpoint}, {res.last_checkpoint}")
    if res.status == "failed_nan":
        print(f"archbench train: error: {res.error}", file=__import__("sys").stderr)
        return 1
    return 0


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _epoch_line(record: dict) -> str:
    """One epoch's figures: losses as numbers, accuracies (``acc``, ``top1``, ``top5``
    keys, stored as fractions) in percent, whatever the task logs."""
    parts = []
    for key, value in record.items():
        if not (key.startswith("train_") or key.startswith("val_")):
            continue
        shown = pct(value) if key.endswith(("_acc", "_top1", "_top5")) else _num(value)
        parts.append(f"{key} {shown}")
    return "  ".join(parts) + f"  {record['images_per_s']:.0f} img/s"
