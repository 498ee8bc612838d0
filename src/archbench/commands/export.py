"""`archbench export RUN --format onnx|torch-export --out FILE`: a trained model out of Python.

RUN is a run folder written by ``archbench train`` (or one run of a comparison), or a
``.safetensors`` checkpoint inside one; the model is rebuilt from its model.json. The
exported model is checked against PyTorch (onnxruntime for ONNX, the exported program for
torch.export) on the run's input size before FILE is written; see ``docs/export.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from archbench.export import EXPORT_FORMATS, export_model
from archbench.runs import locate_checkpoint

from ._common import non_negative_int, positive_float, positive_int, print_json


def _tolerance(text: str) -> float:
    """An argparse type: a tolerance >= 0 (0 asks for exact equality)."""
    if text.strip() in ("0", "0.0"):
        return 0.0
    return positive_float(text)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a trained run to ONNX or a torch.export program, checked against PyTorch",
    )
    p.add_argument("run", help="run folder from `archbench train`, or a .safetensors file in one")
    p.add_argument("--format", required=True, choices=EXPORT_FORMATS, dest="fmt")
    p.add_argument("--out", required=True, help="file to write (.onnx or .pt2 by convention)")
    p.add_argument(
        "--which", default="best", choices=["best", "last"], help="checkpoint of a run folder"
    )
    p.add_argument("--batch", type=positive_int, default=2, help="batch of the example input")
    p.add_argument("--atol", type=_tolerance, default=1e-4, help="absolute tolerance (1e-4)")
    p.add_argument("--rtol", type=_tolerance, default=1e-4, help="relative tolerance (1e-4)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the example input")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.is_dir():
        raise IsADirectoryError(f"--out {str(out)!r} is a folder; give a file name")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"--out: the folder {str(out.parent)!r} does not exist")
    ck, _ = locate_checkpoint(Path(args.run), args.which)  # fails before the model is built

    from archbench.runs import load_trained

    model, info = load_trained(Path(args.run), args.which)
    kwargs = info.get("kwargs", {})
    size = kwargs.get("img_size", 224)
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    in_chans = kwargs.get("in_chans", 3)
    g = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch, in_chans, h, w, generator=g)
    result = export_model(model, x, args.fmt, out, atol=args.atol, rtol=args.rtol)
    result = {"run": str(ck), "model": info["model"], **result}
    if args.json:
        print_json(result)
    else:
        print(
            f"{info['model']} -> {result['path']} ({args.fmt}, {result['bytes'] / 1e6:.2f} MB): "
            f"outputs match PyTorch on {in_chans}x{h}x{w} inputs (batch {args.batch} and "
            f"{args.batch + 1}), max abs error {result['max_abs_error']:.2g} "
            f"<= atol {args.atol:g} + rtol {args.rtol:g} x |logit|"
        )
    return 0
