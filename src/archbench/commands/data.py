"""`archbench data SPEC`: load a dataset and describe it.

`archbench data pack FOLDER --out DIR [--shard-size N]`: write an image folder as tar
shards that the ``shards:`` spec streams (archbench.data.stream)."""

from __future__ import annotations

import argparse

from archbench.data import list_datasets, load_dataset, pack_folder

from ._common import non_negative_int, positive_int, print_json


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
    p.add_argument("folder", nargs="?", help="with 'pack': the image folder to write as shards")
    p.add_argument("--out", help="with 'pack': the folder the shards are written to")
    p.add_argument(
        "--shard-size", type=positive_int, default=10000, help="with 'pack': images per shard"
    )
    p.set_defaults(func=run_data)


def run_pack(args: argparse.Namespace) -> int:
    if not args.folder or not args.out:
        raise ValueError(
            "data pack: give a folder and --out, e.g. data pack /data/pets --out shards/"
        )
    done = pack_folder(args.folder, args.out, shard_size=args.shard_size)
    if args.json:
        print_json(done)
    else:
        print(f"wrote {done['samples']} images in {done['shards']} shard(s); read them with")
        print(f"  {done['spec']}")
    return 0


def run_data(args: argparse.Namespace) -> int:
    if args.spec == "pack":
        return run_pack(args)
    if args.folder or args.out:
        raise ValueError(
            f"data: unexpected {args.folder or '--out'!r}; a folder and --out go with "
            "'data pack FOLDER --out DIR'"
        )
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
