"""`archbench models` and `archbench info`."""

from __future__ import annotations

import argparse

import torch

from archbench.bench import count_flops, count_params
from archbench.models import create_model, get_model_card, list_families, list_models

from ._common import format_table, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list registered models")
    p.add_argument("pattern", nargs="?", help="glob or substring, e.g. 'resnet*' or 'pico'")
    p.add_argument("--family", help="only this family")
    p.add_argument("--kind", help="only this kind (cnn, vit, hybrid, mlp, metaformer, ssm, kan)")
    p.add_argument("--scale", choices=["canonical", "cpu", "other"], help="only this scale")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run_models)

    p = sub.add_parser("info", help="a model's card plus its measured parameters and MACs")
    p.add_argument("model")
    p.add_argument("--img-size", type=int, help="input size (default: the card's)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_info)


def run_models(args: argparse.Namespace) -> int:
    if args.family and args.family not in list_families():
        raise ValueError(f"unknown family {args.family!r}; families: {', '.join(list_families())}")
    names = list_models(args.pattern, family=args.family, kind=args.kind, scale=args.scale)
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
        ("top1", "paper top-1"),
    ]
    print(format_table(cards, cols))
    print(f"\n{len(cards)} models")
    return 0


def run_info(args: argparse.Namespace) -> int:
    card = get_model_card(args.model)
    # Build on the meta device: counting parameters and FLOPs needs no memory or compute.
    with torch.device("meta"):
        model = create_model(args.model)
    size = args.img_size or card.img_size
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
    if card.params_m:
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
