"""`archbench data SPEC`: load a dataset and describe it."""

from __future__ import annotations

import argparse

from archbench.data import list_datasets, load_dataset

from ._common import non_negative_int, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data",
        help="describe a dataset: classes, split sizes, channels, mean/std",
        description="Datasets: "
        + ", ".join(list_datasets())
        + ". Spec: name[:path][,key=value...], "
        "e.g. shapes:num_classes=10,img_size=32 or folder:/data/pets,img_size=64",
    )
    p.add_argument("spec", help="dataset spec, e.g. 'shapes', 'digits', 'folder:/path'")
    p.add_argument(
        "--seed", type=non_negative_int, default=0, help="seed of procedural data and of the split"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run_data)


def run_data(args: argparse.Namespace) -> int:
    d = load_dataset(args.spec, seed=args.seed).describe()
    if args.json:
        print_json(d)
        return 0
    width = max(len(k) for k in d)
    for k, v in d.items():
        if k == "class_names" and len(v) > 20:
            v = ", ".join(v[:20]) + f", ... ({len(v)} classes)"
        elif isinstance(v, list):
            v = ", ".join(str(x) for x in v)
        print(f"{k:<{width}}  {v}")
    return 0
