"""`archbench main`: the default job, runnable on a fresh machine with no data or options.

A fair comparison of one CPU-scale model of each kind (a ResNet, a ConvNeXt, a ViT, an
MLP-Mixer and a MetaFormer), three seeds each, so that every gap gets a verdict with a
confidence interval. It is sized to finish in about five minutes on two cores:

- data: scikit-learn's handwritten ``digits`` (1,797 real 8x8 images, 10 classes), shipped
  with scikit-learn, so nothing downloads, upsampled to 16x16, one channel; 70% train,
  10% validation (checkpoint choice), 20% test (359 images, read once per run);
- models: the ``*_pico`` variants at their default widths, built for 16x16 inputs;
- recipe: ``cpu-fast`` (AdamW, cosine, label smoothing) for 7 epochs, resolved for this
  data by the recipe rules (no flips for digits; batch size and warm-up for a small set);
- precision: float32 (bf16 autocast only pays on CPUs with bf16 instructions, and the
  reference 2-core machine has none; ``benchmarks/main_job.py`` measures both).

The report states all of this. It ends by printing the leaderboard and where the report
is. Re-running it reuses the completed runs.
"""

from __future__ import annotations

import argparse
import sys
import time

from archbench.bench.compare import CompareSpec, run_compare

from ._common import compare_summary, positive_int, print_json

DEFAULT_MODELS = ["resnet_pico", "convnext_pico", "vit_pico", "mixer_pico", "caformer_pico"]
DEFAULT_DATA = "digits:img_size=16,val_frac=0.1,test_frac=0.2"
DEFAULT_EPOCHS = 7
DEFAULT_SEEDS = 3


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "main",
        help="the default job: a fair comparison of one CPU-scale model of each kind on `digits`",
    )
    p.add_argument(
        "--epochs",
        type=positive_int,
        default=DEFAULT_EPOCHS,
        help=f"epochs per model (default {DEFAULT_EPOCHS})",
    )
    p.add_argument(
        "--seeds",
        type=positive_int,
        default=DEFAULT_SEEDS,
        help=f"seeds per model (default {DEFAULT_SEEDS}; a verdict needs at least 2)",
    )
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
    split = ", ".join(f"{k[:-2]} {v:.0f} s" for k, v in result.get("phases", {}).items())
    print(f"wall-clock:  {time.perf_counter() - t0:.0f} s ({split})")
    return 0


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr)
