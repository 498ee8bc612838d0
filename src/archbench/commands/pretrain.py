"""`archbench pretrain MODEL --method M --data SPEC --out DIR`: self-supervised pretraining.

A label-free method of :mod:`archbench.ssl` trains the backbone as a task of the usual
loop (``archbench train MODEL --task M``), so the run folder is a normal one: its
checkpoints hold the encoder (the model's weights; its classifier stays untrained), the
method's heads are task state, and ``model.json`` records the model. ``archbench probe
DIR`` then measures the encoder; ``archbench train MODEL --model-arg pretrained=...`` or
the ``simclr_v2_finetune`` task fine-tunes it. Labels never reach the method.
"""

from __future__ import annotations

import argparse

from archbench.models import get_model_card
from archbench.ssl.base import check_method, ssl_methods

__all__ = ["check_method", "register", "ssl_methods"]

from ._common import add_model_arg, non_negative_int, positive_float, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain", help="self-supervised pretraining of a backbone (labels hidden; resumable)"
    )
    p.add_argument("model", help="registered model name, e.g. resnet_pico")
    p.add_argument("--method", required=True, help="self-supervised method, e.g. simclr_v2")
    p.add_argument(
        "--method-arg",
        action="extend",
        nargs="+",
        metavar="KEY=VALUE",
        default=None,
        help="an argument of the method, e.g. temperature=0.2 (values read as JSON)",
    )
    p.add_argument("--data", required=True, help="dataset spec (its labels are not used)")
    p.add_argument("--recipe", default="cpu-fast", help="shipped recipe or a YAML/JSON file")
    p.add_argument("--out", required=True, help="run folder (created; an existing run resumes)")
    p.add_argument("--epochs", type=positive_int, help="override the recipe's epochs")
    p.add_argument("--seed", type=non_negative_int, help="override the recipe's seed")
    p.add_argument(
        "--data-seed", type=non_negative_int, help="seed of the data split (default: --seed)"
    )
    p.add_argument("--batch-size", type=positive_int, help="override the recipe's batch size")
    p.add_argument("--lr", type=positive_float, help="override the recipe's learning rate")
    p.add_argument(
        "--set", action="extend", nargs="+", metavar="KEY=VALUE", help="other recipe fields"
    )
    add_model_arg(p)
    p.add_argument("--max-seconds", type=positive_float, help="wall-clock budget for the run")
    p.add_argument("--threads", type=positive_int, help="torch threads (default: torch's choice)")
    p.add_argument("--fresh", action="store_true", help="start over instead of resuming")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run_pretrain)


def run_pretrain(args: argparse.Namespace) -> int:
    from . import train

    get_model_card(args.model)
    check_method(args.method)
    # every option of `train` that pretrain does not offer takes train's default
    sub = argparse.ArgumentParser().add_subparsers()
    train.register(sub)
    defaults = vars(sub.choices["train"].parse_args([args.model, "--data", "-", "--out", "-"]))
    for key, value in defaults.items():
        if not hasattr(args, key):
            setattr(args, key, value)
    args.task, args.task_arg = args.method, args.method_arg
    return train.run_train(args)
