"""`archbench explain`: CAM explanations as overlays and panels, and faithfulness scores."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from archbench.data import load_dataset
from archbench.data.transforms import normalize
from archbench.explain import (
    METHODS,
    explain,
    faithfulness_table,
    save_overlay,
    save_panel,
    to_display,
)
from archbench.models import create_model, get_model_card
from archbench.runs import load_trained

from ._common import (
    add_model_arg,
    format_table,
    looks_like_path,
    model_args_for,
    non_negative_int,
    positive_int,
    print_json,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explain",
        help="CAM explanations (overlays, a panel) and deletion/insertion faithfulness scores",
    )
    p.add_argument(
        "model",
        metavar="CHECKPOINT_OR_MODEL",
        help="a run folder / checkpoint, or a model name (random weights)",
    )
    p.add_argument("--images", nargs="*", default=[], metavar="PATH", help="image files to explain")
    p.add_argument(
        "--data", help="take held-out images from this dataset spec (default: the run's data)"
    )
    p.add_argument(
        "--num-images",
        type=positive_int,
        default=8,
        help="how many held-out images with --data (default 8)",
    )
    p.add_argument(
        "--method", nargs="+", default=["gradcam"], help=f"methods: {', '.join(METHODS)}, or all"
    )
    p.add_argument(
        "--target", type=non_negative_int, help="class to explain (default: the predicted class)"
    )
    p.add_argument("--layer", help="module path to explain (default: the model's cam_target)")
    add_model_arg(p)
    p.add_argument("--score", action="store_true", help="print the deletion / insertion table")
    p.add_argument(
        "--json", action="store_true", help="print what was written (and the scores) as JSON"
    )
    p.add_argument("--out", default="explanations", help="output folder (default explanations)")
    p.set_defaults(func=run_explain)


def _load_model(
    spec: str, model_arg: list[str] | None, quiet: bool
) -> tuple[torch.nn.Module, dict]:
    if Path(spec).exists():
        if model_arg:
            raise ValueError(
                "--model-arg goes with a model name; a run folder rebuilds its model from model.json"
            )
        return load_trained(spec)
    if looks_like_path(spec):
        raise FileNotFoundError(f"run folder or checkpoint {spec!r} does not exist")
    try:
        card = get_model_card(spec)
    except ValueError as err:  # the closest registered names are in the message
        raise ValueError(f"no run folder {spec!r} here, and {err}") from None
    kwargs = model_args_for(model_arg, [spec])[spec]
    model = create_model(spec, **kwargs).eval()
    if not quiet:
        print(f"note: {spec} is not a run folder; explaining a randomly initialised {spec}")
    return model, {
        "model": spec,
        "kwargs": {"img_size": card.img_size, **kwargs},
        "data": None,
    }


def _read_image(path: str, channels: int, size: int) -> torch.Tensor:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"image {path!r} does not exist")
    try:
        with Image.open(p) as im:
            im = im.convert("L" if channels == 1 else "RGB").resize((size, size), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read {path!r} as an image: {err}") from None
    t = torch.from_numpy(arr.copy())
    return (t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)).float() / 255.0


def run_explain(args: argparse.Namespace) -> int:
    methods = list(METHODS) if args.method == ["all"] else args.method
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"unknown method(s) {bad}; choose from {', '.join(METHODS)} or all")
    model, info = _load_model(args.model, args.model_arg, quiet=args.json)
    num_classes = getattr(model, "num_classes", None)
    if args.target is not None and num_classes and args.target >= num_classes:
        raise ValueError(
            f"--target {args.target} is not a class of this model (0..{num_classes - 1})"
        )
    in_chans = getattr(model, "in_chans", 3)
    size = int(info["kwargs"].get("img_size", 224))
    data_spec = args.data or info.get("data")
    mean = std = None
    names: list[str] = []
    raw_list = []
    if data_spec:
        data = load_dataset(data_spec, seed=info.get("data_seed", 0))
        mean, std = data.mean, data.std
        if not args.images:
            split = data.test if data.test is not None else data.val
            n = min(args.num_images, len(split))
            raw_list = [split.images[:n].float() / 255.0]
            names = [f"{data.name} test #{i}" for i in range(n)]
    for path in args.images:
        raw_list.append(_read_image(path, in_chans, size).unsqueeze(0))
        names.append(Path(path).name)
    if not raw_list:
        raise ValueError("nothing to explain: give --images PATH... or --data SPEC")
    raw = torch.cat(raw_list)
    if mean is None:  # a bare model name and files: scale to [-1, 1]
        mean, std = (0.5,) * in_chans, (0.5,) * in_chans
    x = normalize(raw, torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1))
    targets = args.target
    out = Path(args.out)
    display = [to_display(r) for r in raw]
    maps = {m: explain(model, x, targets=targets, method=m, layer=args.layer) for m in methods}
    for m, mm in maps.items():
        for i, name in enumerate(names):
            save_overlay(
                out / m / f"{i:03d}_{Path(name).stem}.png",
                display[i],
                mm[i],
                scale=max(1, 128 // size),
            )
    panel = save_panel(out / "panel.png", display, maps, row_labels=names, title=f"{info['model']}")
    report: dict = {
        "model": info["model"],
        "images": names,
        "methods": methods,
        "overlays": str(out),
        "panel": str(panel),
    }
    if not args.json:
        print(f"wrote {len(names)} x {len(methods)} overlays under {out}/ and the panel {panel}")
    if args.score:
        rows = faithfulness_table(
            model, x, methods, targets=None if targets is None else torch.full((len(x),), targets)
        )
        (out / "faithfulness.json").write_text(json.dumps(rows, indent=2))
        report["faithfulness"] = rows
    if args.json:
        print_json(report)
    elif args.score:
        print(
            format_table(
                rows,
                [
                    ("method", "method"),
                    ("deletion_auc", "deletion AUC (lower better)"),
                    ("insertion_auc", "insertion AUC (higher better)"),
                    ("insertion_minus_deletion", "ins - del"),
                    ("images", "images"),
                ],
            )
        )
    return 0
