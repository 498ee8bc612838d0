"""`archbench models` and `archbench info`."""

from __future__ import annotations

import argparse

import torch

from archbench.bench import count_flops, count_params
from archbench.models import create_model, get_model_card, list_families, list_models
from archbench.models._registry import KINDS, SCALES

from ._common import add_model_arg, format_table, model_args_for, positive_int, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list registered models")
    p.add_argument("pattern", nargs="?", help="glob or substring, e.g. 'resnet*' or 'pico'")
    p.add_argument("--family", help="only this family")
    p.add_argument("--kind", help=f"only this kind ({', '.join(KINDS)})")
    p.add_argument("--scale", help=f"only this scale ({', '.join(SCALES)})")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run_models)

    p = sub.add_parser("info", help="a model's card plus its measured parameters and MACs")
    p.add_argument("model")
    p.add_argument(
        "--img-size", type=positive_int, help="input size (default: the card's or img_size=)"
    )
    add_model_arg(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run_info)


def _check_choice(option: str, value: str | None, choices: list[str] | tuple[str, ...]) -> None:
    if value is not None and value not in choices:
        raise ValueError(f"unknown {option} {value!r}; choose from {', '.join(choices)}")


def run_models(args: argparse.Namespace) -> int:
    _check_choice("--family", args.family, list_families())
    _check_choice("--kind", args.kind, KINDS)
    _check_choice("--scale", args.scale, SCALES)
    names = list_models(args.pattern, family=args.family, kind=args.kind, scale=args.scale)
    if not names:
        asked = [
            f"{key} {value!r}"
            for key, value in (
                ("pattern", args.pattern),
                ("family", args.family),
                ("kind", args.kind),
                ("scale", args.scale),
            )
            if value
        ]
        raise ValueError(
            f"no registered model has {' and '.join(asked)}; "
            "run `archbench models` to list them all"
        )
    cards = [get_model_card(n).to_dict() for n in names]
    if args.json:
        print_json(cards)
        return 0
    cols = [
        ("name", "model"),
        ("family", "family"),
        ("kind", "kind"),
        ("scale", "scale"),
        ("img_size", "img"),
        ("params_m", "paper M params"),
        ("gmacs", "paper GMACs"),
        ("top1", "paper top-1 (%)"),
    ]
    print(format_table(cards, cols))
    print(f"\n{len(cards)} models")
    return 0


def run_info(args: argparse.Namespace) -> int:
    card = get_model_card(args.model)
    user_kwargs = model_args_for(args.model_arg, [args.model])[args.model]
    kwargs = dict(user_kwargs)
    if args.img_size is not None:  # models with a fixed token grid are built for the size
        if kwargs.setdefault("img_size", args.img_size) != args.img_size:
            raise ValueError(
                f"--img-size {args.img_size} and --model-arg img_size={kwargs['img_size']} disagree"
            )
    # Build on the meta device: counting parameters and FLOPs needs no memory or compute.
    with torch.device("meta"):
        model = create_model(args.model, **kwargs)
    size = kwargs.get("img_size", card.img_size)
    params = count_params(model)
    flops = count_flops(model, size)
    info = card.to_dict()
    info["measured"] = {
        "params": params["total"],
        "params_m": params["total"] / 1e6,
        "trainable_params": params["trainable"],
        "gmacs": flops["macs"] / 1e9,
        "img_size": size,
    }
    if user_kwargs:
        info["model_args"] = user_kwargs
    if card.params_m and not user_kwargs and size == card.img_size:
        # the paper's figure is for the variant as registered, at the card's size
        info["measured"]["params_vs_paper_pct"] = 100.0 * (
            params["total"] / 1e6 / card.params_m - 1
        )
    if args.json:
        print_json(info)
        return 0
    width = max(len(k) for k in info)
    for k, v in info.items():
        if k != "measured" and v not in (None, "", {}):
            print(f"{k:<{width}}  {v}")
    print("measured:")
    for k, v in info["measured"].items():
        print(f"  {k:<20}  {v:.4g}" if isinstance(v, float) else f"  {k:<20}  {v}")
    return 0
