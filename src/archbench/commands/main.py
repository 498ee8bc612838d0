"""`archbench main`: the default job, runnable on a fresh machine with no data or options.

A fair comparison of one CPU-scale model of each kind (a ResNet, a ConvNeXt, a ViT, an
MLP-Mixer and a MetaFormer) on the embedded `shapes` dataset with the `cpu-fast` recipe,
sized to finish in a few minutes on two cores. It ends by printing the leaderboard and
where the report is. Re-running it reuses the completed runs.
"""

from __future__ import annotations

import argparse
import sys
import time

from archbench.bench.compare import CompareSpec, run_compare

from ._common import compare_summary, positive_int, print_json

DEFAULT_MODELS = ["resnet_pico", "convnext_pico", "vit_pico", "mixer_pico", "caformer_pico"]
DEFAULT_DATA = "shapes:n_train=3000,n_val=1000,n_test=1000"
DEFAULT_EPOCHS = 5


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "main",
        help="the default job: a fair comparison of one CPU-scale model of each kind on `shapes`",
    )
    p.add_argument(
        "--epochs",
        type=positive_int,
        default=DEFAULT_EPOCHS,
        help=f"epochs per model (default {DEFAULT_EPOCHS})",
    )
    p.add_argument("--seeds", type=positive_int, default=1, help="seeds per model (default 1)")
    p.add_argument(
        "--jobs", type=positive_int, default=2, help="runs trained in parallel (default 2)"
    )
    p.add_argument("--out", default="runs/main", help="output folder (default runs/main)")
    p.add_argument(
        "--json",
        action="store_true",
        help="print the leaderboard rows and output paths as JSON (progress goes to stderr)",
    )
    p.set_defaults(func=run_main)


def run_main(args: argparse.Namespace) -> int:
    spec = CompareSpec(
        models=list(DEFAULT_MODELS),
        data=DEFAULT_DATA,
        recipe="cpu-fast",
        epochs=args.epochs,
        seeds=args.seeds,
        jobs=args.jobs,
        out=args.out,
    )
    log = _to_stderr if args.json else print
    log(
        f"archbench main: {len(spec.models)} CPU-scale models ({', '.join(spec.models)}) on "
        f"{spec.data}, recipe cpu-fast, {args.epochs} epochs, {args.seeds} seed(s), {args.jobs} jobs"
    )
    t0 = time.perf_counter()
    result = run_compare(spec, log=log)
    if args.json:
        print_json(compare_summary(result))
        return 0
    print()
    print(result["leaderboard"])
    print(f"\nleaderboard: {result['out'] / 'leaderboard.md'}")
    print(f"report:      {result['report']}   (open it in a browser; it needs no network)")
    print(f"results:     {result['out'] / 'results.jsonl'}")
    print(f"wall-clock:  {time.perf_counter() - t0:.0f} s")
    return 0


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr)
