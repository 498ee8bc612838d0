"""Pretraining images/s of each self-supervised method against a supervised step on the
same backbone (CPU-scale variants, ``shapes`` at 32x32).

Each (backbone, method) trains through the real engine (:func:`archbench.train.fit`) for
two epochs of ``--steps`` steps at ``--batch``: the first epoch is warm-up, the second is
timed. Images/s counts the batch's *source* images per second of step time (a method that
makes several views or crops of each image pays for them), validation excluded. The
supervised row is the default classification task with the same recipe. ``slowdown`` is
supervised images/s / method images/s.

Run: ``.venv/bin/python benchmarks/ssl_speed.py [--models resnet_pico vit_pico]
[--methods simclr_v2 swav ...] [--batch 64] [--steps 4] [--threads 1]``. Writes
``benchmarks/results/ssl_speed.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from archbench.bench import environment
from archbench.data import load_dataset
from archbench.models import create_model
from archbench.ssl.base import ssl_methods
from archbench.train import create_task, fit, load_recipe

# arguments that keep a method runnable on 32x32 CPU-scale data in a few steps
METHOD_ARGS: dict[str, dict] = {
    "g_simclr": {"ae_steps": 20},
}


def measure(name: str, method: str, data, recipe, tmp: Path) -> dict:
    args = METHOD_ARGS.get(method, {}) if method != "supervised" else {}
    task_name = "classification" if method == "supervised" else method
    torch.manual_seed(0)
    model = create_model(name, num_classes=data.num_classes, img_size=data.img_size)
    task = create_task(task_name, args)
    task.check(model, data)
    r = recipe.replace(task=task_name, task_args=args)
    res = fit(model, data, r, tmp / f"{name}-{method}", task=task, resume=False, progress=False)
    if res.status != "completed":
        raise RuntimeError(f"{res.status}: {res.error}")
    timed = res.history[-1]
    return {
        "images_per_s": timed["images_per_s"],
        "step_time_s": timed["step_time_s"],
        "data_time_s": timed["data_time_s"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["resnet_pico", "vit_pico"])
    ap.add_argument("--methods", nargs="+", help="default: every registered SSL method")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=4, help="steps per epoch (2 epochs, 2nd timed)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "ssl_speed.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    methods = args.methods or list(ssl_methods())
    n_train = args.batch * args.steps
    spec = f"shapes:img_size=32,n_train={n_train},n_val={args.batch},n_test=16"
    data = load_dataset(spec, seed=0)
    recipe = load_recipe("cpu-fast").replace(
        epochs=2, batch_size=args.batch, eval_batch_size=args.batch, warmup_epochs=0.0
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            base = None
            for method in ["supervised", *methods]:
                row: dict = {"model": name, "method": method}
                t0 = time.perf_counter()
                try:
                    try:
                        row.update(measure(name, method, data, recipe, Path(tmp)))
                    except ValueError as err:  # one input size (a ViT): SwAV without small crops
                        if "small_crops=0" not in str(err):
                            raise
                        METHOD_ARGS[method] = {**METHOD_ARGS.get(method, {}), "small_crops": 0}
                        row["args"] = METHOD_ARGS[method]
                        row.update(measure(name, method, data, recipe, Path(tmp)))
                        METHOD_ARGS[method].pop("small_crops")
                    if method == "supervised":
                        base = row["images_per_s"]
                    elif base:
                        row["slowdown"] = base / row["images_per_s"]
                except Exception as err:  # a method that cannot use this backbone
                    row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0]}"
                row["wall_s"] = time.perf_counter() - t0
                rows.append(row)
                shown = (
                    f"{row['images_per_s']:8.1f} img/s  x{row.get('slowdown', 1.0):.2f}"
                    if "images_per_s" in row
                    else row["error"]
                )
                print(f"{name:<14} {method:<20} {shown}", flush=True)
    out = {
        "conditions": {
            "data": spec,
            "batch": args.batch,
            "steps_timed": args.steps,
            "threads": args.threads,
            "timed": "second of two epochs; step time only (validation excluded)",
            "environment": environment(),
        },
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
