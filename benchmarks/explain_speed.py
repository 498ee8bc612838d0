"""Time to explain a batch of images with each CAM method: batched call vs a per-image loop,
chunk sizes at 224x224, and Grad-CAM against pytorch-grad-cam's batched call.

Writes benchmarks/results/explain_speed.json (all figures of one run, with the load
average before and after). Gradient methods use one forward and one backward per chunk
of images; Score-CAM and Ablation-CAM batch their masked passes across images (one pass
per image and channel at the layer), so at 224x224 they are timed on fewer images
(stated). Times are medians over alternating rounds (batched, loop, ... in turn).

The peer comparison runs in the peer virtual environment (``../shared/peers/setup.sh``,
default ``/tmp/peers-venv``; pytorch-grad-cam imported through the peers' torchvision
shim) with archbench on ``PYTHONPATH``: the same archbench model, target layer, images and
targets go to ``pytorch_grad_cam.GradCAM`` and to ``archbench.explain``, alternating in
one process. It is skipped, with the reason in the JSON, when that venv is absent.

    python benchmarks/explain_speed.py [--models resnet_pico vit_pico] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

import torch

from archbench.bench import environment
from archbench.explain import METHODS, explain
from archbench.explain.cam import CHUNK_PIXELS, default_chunk_size
from archbench.models import create_model

HEAVY = ("scorecam", "ablationcam")
ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT.parent / "shared" / "peers"

PEER_CODE = r"""
import json, statistics, sys, time, torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from archbench.explain import explain
from archbench.models import create_model
name, size, n, rounds, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
torch.manual_seed(0)
model = create_model(name, num_classes=10, img_size=size).eval()
layer = model.get_submodule(model.cam_target)
x = torch.randn(n, model.in_chans, size, size)
with torch.no_grad():
    targets = model(x).argmax(1)
cam = GradCAM(model=model, target_layers=[layer])
peer = lambda: cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])
ours = lambda: explain(model, x, targets=targets, method="gradcam")
diff = float((torch.as_tensor(peer()) - ours()).abs().max())
tp, to = [], []
for i in range(rounds + 1):
    for f, ts in ((peer, tp), (ours, to)) if i % 2 else ((ours, to), (peer, tp)):
        t0 = time.perf_counter(); f(); dt = time.perf_counter() - t0
        if i: ts.append(dt)
print(json.dumps({"model": name, "img_size": size, "images": n, "layer": model.cam_target,
    "pytorch_grad_cam_s": statistics.median(tp), "archbench_s": statistics.median(to),
    "ratio": statistics.median([p / o for p, o in zip(tp, to)]), "max_abs_diff": diff,
    "rounds": rounds}))
"""


def _medians(fns: dict, rounds: int) -> dict[str, float]:
    """Median time of each function over ``rounds`` alternating rounds after one warm-up."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(rounds + 1):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if i:
                times[key].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def peer_gradcam(args) -> list[dict] | dict:
    python = Path(args.peer_venv) / "bin" / "python"
    if not python.exists():
        return {"skipped": f"no peer venv at {args.peer_venv} (run {PEERS / 'setup.sh'})"}
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{PEERS / 'shim'}")
    rows = []
    for name in args.models:
        for size, n in ((32, args.images), (224, args.images_224)):
            cmd = [str(python), "-c", PEER_CODE, name, str(size), str(n), str(args.rounds)]
            cmd.append(str(args.threads or torch.get_num_threads()))
            run = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if run.returncode:
                tail = run.stderr.strip().splitlines()[-1:] or ["no output"]
                return {"skipped": f"peer run failed: {tail[0]}"}
            row = json.loads(run.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(
                f"Grad-CAM vs pytorch-grad-cam {name} {size}: peer {row['pytorch_grad_cam_s']:.3f} s,"
                f" ours {row['archbench_s']:.3f} s, x{row['ratio']:.2f}",
                flush=True,
            )
    return rows


def chunk_sweep(args) -> list[dict]:
    """Batched Grad-CAM / Score-CAM at 224x224 with several chunk sizes vs the per-image loop."""
    rows = []
    for name in args.models:
        torch.manual_seed(0)
        model = create_model(name, num_classes=10, img_size=224).eval()
        for method in args.sweep_methods:
            n = args.heavy_images_224 if method in HEAVY else args.images_224
            if n < 1:
                continue
            x = torch.randn(n, model.in_chans, 224, 224)
            fns = {
                "loop": lambda m=model, x=x, k=method: [
                    explain(m, x[i : i + 1], method=k) for i in range(len(x))
                ]
            }
            chunks = sorted({c for c in (1, 2, 4, 8, 16, n) if c <= n})
            for c in chunks:
                fns[f"chunk_{c}"] = lambda m=model, x=x, k=method, c=c: explain(
                    m, x, method=k, chunk_size=c
                )
            med = _medians(fns, args.rounds)
            row = {
                "model": name,
                "img_size": 224,
                "method": method,
                "images": n,
                "loop_s": med["loop"],
                "chunk_s": {c: med[f"chunk_{c}"] for c in chunks},
                "default_chunk": default_chunk_size(224, 224),
            }
            rows.append(row)
            print(
                f"chunks {name} {method} n={n}: loop {med['loop']:.3f} s, "
                + ", ".join(f"{c}: {med[f'chunk_{c}']:.3f}" for c in chunks),
                flush=True,
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet_pico", "vit_pico"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[32, 224])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument(
        "--images-224", type=int, default=16, help="images for gradient methods at 224"
    )
    parser.add_argument(
        "--heavy-images-224", type=int, default=4, help="images for Score/Ablation-CAM at 224"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--sweep-methods", nargs="+", default=["gradcam"], help="methods of the 224 chunk sweep"
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--peer-venv", default="/tmp/peers-venv")
    parser.add_argument("--skip", nargs="*", default=[], choices=["methods", "chunks", "peer"])
    parser.add_argument("--out", default="benchmarks/results/explain_speed.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    peer = peer_gradcam(args) if "peer" not in args.skip else {"skipped": "--skip peer"}
    chunks = chunk_sweep(args) if "chunks" not in args.skip else []
    rows = []
    for name in args.models if "methods" not in args.skip else []:
        for size in args.sizes:
            torch.manual_seed(0)
            try:
                model = create_model(name, num_classes=10, img_size=size).eval()
            except ValueError as err:
                print(f"skip {name} at {size}: {err}")
                continue
            for method in args.methods:
                if size >= 224:
                    n = args.heavy_images_224 if method in HEAVY else args.images_224
                else:
                    n = args.images
                if n < 1:
                    continue  # e.g. --heavy-images-224 0
                x = torch.randn(n, model.in_chans, size, size)
                med = _medians(
                    {
                        "batched": lambda m=model, x=x, k=method: explain(m, x, method=k),
                        "loop": lambda m=model, x=x, k=method: [
                            explain(m, x[i : i + 1], method=k) for i in range(len(x))
                        ],
                    },
                    args.rounds,
                )
                batched, loop = med["batched"], med["loop"]
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
                    f"{name:12s} {size:4d} {method:12s} n={n:3d}  batched {batched:8.3f} s  loop {loop:8.3f} s  x{loop / batched:5.1f}",
                    flush=True,
                )
    ratios = {
        "gradcam_pytorch_grad_cam_over_archbench": (
            {f"{r['model']}@{r['img_size']}": r["ratio"] for r in peer}
            if isinstance(peer, list)
            else None
        ),
        "loop_over_batched": {
            f"{r['model']}@{r['img_size']}:{r['method']}": r["speedup"] for r in rows
        },
    }
    result = {
        "environment": environment(),
        "conditions": {
            "threads": torch.get_num_threads(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "rounds": args.rounds,
            "timing": "median over alternating rounds after one warm-up round",
            "default_chunk_pixels": CHUNK_PIXELS,
            "machine": "shared with other jobs",
        },
        "ratios": ratios,
        "peer_gradcam": peer,
        "chunk_sweep_224": chunks,
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
