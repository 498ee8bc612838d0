"""Time to explain a batch of images with each CAM method: batched call vs a per-image loop.

Writes benchmarks/results/explain_speed.json. Gradient methods use one forward and one
backward per batch; Score-CAM and Ablation-CAM batch their masked passes (one pass per
image and channel at the layer), so at 224x224 they are timed on fewer images (stated).

    python benchmarks/explain_speed.py [--models resnet_pico vit_pico] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from archbench.bench import environment
from archbench.explain import METHODS, explain
from archbench.models import create_model

HEAVY = ("scorecam", "ablationcam")


def _time(fn, repeats: int = 1) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet_pico", "vit_pico"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[32, 224])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument(
        "--heavy-images-224", type=int, default=4, help="images for Score/Ablation-CAM at 224"
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="benchmarks/results/explain_speed.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        for size in args.sizes:
            torch.manual_seed(0)
            try:
                model = create_model(name, num_classes=10, img_size=size).eval()
            except ValueError as err:
                print(f"skip {name} at {size}: {err}")
                continue
            for method in METHODS:
                n = args.heavy_images_224 if (method in HEAVY and size >= 224) else args.images
                x = torch.randn(n, model.in_chans, size, size)
                batched = _time(lambda m=model, x=x, k=method: explain(m, x, method=k))
                loop = _time(
                    lambda m=model, x=x, k=method: [
                        explain(m, x[i : i + 1], method=k) for i in range(len(x))
                    ]
                )
                row = {
                    "model": name,
                    "img_size": size,
                    "method": method,
                    "images": n,
                    "batched_s": batched,
                    "loop_s": loop,
                    "speedup": loop / batched,
                }
                rows.append(row)
                print(
                    f"{name:12s} {size:4d} {method:12s} n={n:3d}  batched {batched:8.3f} s  loop {loop:8.3f} s  x{loop / batched:5.1f}"
                )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"environment": environment(), "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
