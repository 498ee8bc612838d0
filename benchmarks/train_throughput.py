"""Training throughput of the CPU-scale variants on ``shapes`` at 32x32, and the share of
each training step spent in data loading and augmentation (goal: under 10%).

Each model trains through the real engine (:func:`archbench.train.fit`) for two epochs
of ``--steps`` steps at ``--batch``: the first epoch is warm-up, the second is timed.
Images/s = images of the timed epoch / time of its steps (forward, backward, optimizer
step, batch slicing and augmentation; validation excluded). Data share = time spent
slicing the batch and augmenting it / step time.

Run: ``.venv/bin/python benchmarks/train_throughput.py [MODEL ...] [--batch 64]
[--steps 6] [--threads 1] [--recipe cpu-fast]``. Writes
``benchmarks/results/train_throughput.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from archbench.bench import environment
from archbench.data import load_dataset
from archbench.models import create_model, get_model_card, list_models
from archbench.train import fit, load_recipe


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*", help="model names (default: every scale='cpu' variant)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=6, help="steps per epoch (2 epochs, 2nd timed)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--recipe", default="cpu-fast")
    ap.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "train_throughput.json")
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = args.models or list_models(scale="cpu")
    n_train = args.batch * args.steps
    spec = f"shapes:img_size=32,n_train={n_train},n_val={args.batch},n_test=16"
    data = load_dataset(spec, seed=0)
    recipe = load_recipe(args.recipe).replace(
        epochs=2, batch_size=args.batch, eval_batch_size=args.batch, warmup_epochs=0.0, ema=False
    )
    rows = []
    for name in names:
        row: dict = {"model": name}
        try:
            kind = get_model_card(name).kind
            torch.manual_seed(0)
            model = create_model(name, num_classes=data.num_classes, img_size=32)
            row["kind"] = kind
            row["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                res = fit(model, data, recipe, tmp, progress=False)
                row["wall_s"] = time.perf_counter() - t0
            timed = res.history[-1]
            row["images_per_s"] = timed["images_per_s"]
            row["step_ms"] = 1000 * timed["step_time_s"] / args.steps
            row["data_share"] = timed["data_time_s"] / timed["step_time_s"]
            row["status"] = res.status
        except Exception as err:  # a family under construction must not stop the sweep
            row["error"] = f"{type(err).__name__}: {err}"[:300]
        rows.append(row)
        if "error" in row:
            print(f"{name:<28} error: {row['error']}", file=sys.stderr)
        else:
            print(
                f"{name:<28} {row['images_per_s']:8.1f} img/s  step {row['step_ms']:7.1f} ms  "
                f"data {100 * row['data_share']:5.2f}%",
                flush=True,
            )
    ok = [r for r in rows if "error" not in r]
    summary = {
        "models": len(rows),
        "failed": len(rows) - len(ok),
        "max_data_share": max((r["data_share"] for r in ok), default=None),
        "median_data_share": sorted(r["data_share"] for r in ok)[len(ok) // 2] if ok else None,
        "goal_data_share_below": 0.10,
    }
    result = {
        "benchmark": "train_throughput",
        "conditions": {
            "dataset": spec,
            "img_size": 32,
            "batch": args.batch,
            "timed_steps": args.steps,
            "warmup": "one epoch of the same steps, not timed",
            "recipe": recipe.to_dict(),
            "precision": recipe.precision,
            "threads": args.threads,
            "runs": 1,
            "load_average_1_5_15min_at_end": list(os.getloadavg()),
            "what": "fit() step time: batch slice + augmentation + forward + backward + optimizer",
        },
        "environment": environment(),
        "summary": summary,
        "results": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"\n{len(ok)}/{len(rows)} models; data share max {summary['max_data_share']}, "
        f"median {summary['median_data_share']} (goal < 10%); wrote {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
