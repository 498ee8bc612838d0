"""Time to explain a batch of images with each CAM method: batched call vs a per-image loop,
pass sizes at 224x224, and Grad-CAM against pytorch-grad-cam's batched call.

Writes benchmarks/results/explain_speed.json (all figures of one run, with the load
average before and after). Every timing is a median over alternating rounds (batched,
loop, ... in turn, the order reversed every other round) after one warm-up round; wall
time and the process's CPU time are both recorded (with one thread, CPU time is less
disturbed by other jobs taking the core). The per-image loop is ``explain`` called on
one image at a time, with the same defaults.

Gradient methods use one forward and one backward per chunk of images; Score-CAM and
Ablation-CAM need one forward per image and channel at the layer, so they run on fewer
images and only for ``--heavy-models`` (stated in the JSON). The pass-size sweep at
224x224 times Grad-CAM with fixed chunk sizes, the automatic choice and a forward-only
pass (the model's share of the time), and Score-CAM with the old fixed ``batch_size=64``
against the automatic one; ``cam_arithmetic`` counts the CAM-specific element
operations per image against the model's forward FLOPs.

The peer comparison runs in the peer virtual environment (``../shared/peers/setup.sh``,
default ``/tmp/peers-venv``; pytorch-grad-cam imported through the peers' torchvision
shim) with archbench on ``PYTHONPATH``: the same archbench model, target layer, images and
targets go to ``pytorch_grad_cam.GradCAM`` and to ``archbench.explain``, alternating in
one process. It is skipped, with the reason in the JSON, when that venv is absent.

    python benchmarks/explain_speed.py [--models resnet_pico resnet18] [--threads 1 2]
        [--full-threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from peer_venv import DEFAULT_VENV, run_snippet

from archbench.bench import environment
from archbench.bench.measure import count_flops
from archbench.explain import METHODS, explain
from archbench.explain import cam as cam_module
from archbench.explain.cam import (
    ACTIVATION_BYTES,
    images_per_pass,
    largest_output,
    resolve_layer,
)
from archbench.models import create_model

HEAVY = ("scorecam", "ablationcam")

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
    "threads": threads, "pytorch_grad_cam_s": statistics.median(tp),
    "archbench_s": statistics.median(to),
    "ratio": statistics.median([p / o for p, o in zip(tp, to)]), "max_abs_diff": diff,
    "rounds": rounds}))
"""


def _medians(fns: dict, rounds: int) -> dict[str, dict[str, float]]:
    """Median wall and CPU seconds of each function over ``rounds`` alternating rounds."""
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    keys = list(fns)
    for i in range(rounds + 1):
        for key in keys if i % 2 else keys[::-1]:
            t0, c0 = time.perf_counter(), time.process_time()
            fns[key]()
            if i:
                wall[key].append(time.perf_counter() - t0)
                cpu[key].append(time.process_time() - c0)
    return {
        k: {"wall_s": statistics.median(wall[k]), "cpu_s": statistics.median(cpu[k])} for k in fns
    }


def _loop(model, x, method, **kw):
    return lambda: [explain(model, x[i : i + 1], method=method, **kw) for i in range(len(x))]


def _forward(model, x, chunk):
    def run():
        with torch.no_grad():
            for i in range(0, len(x), chunk):
                model(x[i : i + chunk])

    return run


def _largest_output(model, x) -> int:
    """Bytes of the largest module output per image (what ``explain`` sizes its passes by)."""
    with largest_output(model) as largest, torch.no_grad():
        model(x[:1])
    return largest[0]


def cam_arithmetic(model, size: int) -> dict:
    """Element operations of Grad-CAM's own work per image against the forward's FLOPs.

    With the layer's map C x h x w and the input H x W: gradient means C h w, weighted sum
    2 C h w, ReLU h w, bilinear upsampling about 8 per output pixel (4 weights, 4
    products and sums), min-max normalisation 4 per output pixel (min, max, subtract,
    divide); the backward from the logits to the layer is the head's (for a GAP + linear
    head, 2 C K for the linear layer and C h w for the pooling).
    """
    x = torch.zeros(1, model.in_chans, size, size)
    store = {}
    handle = resolve_layer(model, None).register_forward_hook(
        lambda _m, _i, o: store.__setitem__("a", o)
    )
    with torch.no_grad():
        logits = model(x)
    handle.remove()
    a = store["a"]
    if a.ndim == 3:
        a = model.tokens_to_map(a)
    c, h, w = a.shape[1:]
    k = logits.shape[1]
    cam_ops = 3 * c * h * w + h * w + 12 * size * size + 2 * c * k + c * h * w
    flops = count_flops(model, img_size=size)["flops"]
    return {
        "layer_map": [c, h, w],
        "cam_element_ops_per_image": cam_ops,
        "forward_flops_per_image": flops,
        "cam_share": cam_ops / flops,
        "passes": "gradient methods: 1 forward + 1 backward (logits to layer) per chunk",
    }


def peer_gradcam(args, threads: int) -> list[dict] | dict:
    rows = []
    for name in args.models:
        for size, n in ((32, args.images), (224, args.images_224)):
            snippet_args = [name, size, n, args.rounds, threads]
            row = run_snippet(args.peer_venv, PEER_CODE, snippet_args, shim=True)
            if "skipped" in row:
                return row
            rows.append(row)
            print(
                f"[{threads} thr] Grad-CAM vs pytorch-grad-cam {name} {size}: peer "
                f"{row['pytorch_grad_cam_s']:.3f} s, ours {row['archbench_s']:.3f} s, "
                f"x{row['ratio']:.2f}",
                flush=True,
            )
    return rows


def _tuned(model, x) -> dict:
    """Where the automatic chunk's timing search ended for this model and input."""
    state = cam_module._TUNING.get(model, {}).get((*x.shape[1:], x.dtype))
    if state is None:
        return {}
    return {"images_per_pass": state.best, "finished": state.done}


def pass_sweep(args, threads: int, heavy: bool) -> list[dict]:
    """Grad-CAM at 224x224 with fixed and automatic chunk sizes against the per-image loop
    and a forward-only pass; Score-CAM with the old fixed batch_size=64 and the automatic one."""
    rows = []
    for name in args.models:
        torch.manual_seed(0)
        model = create_model(name, num_classes=10, img_size=224).eval()
        x = torch.randn(args.images_224, model.in_chans, 224, 224)
        largest = _largest_output(model, x)
        fns = {"loop": _loop(model, x, "gradcam"), "auto": lambda m=model, x=x: explain(m, x)}
        chunks = sorted({c for c in (1, 2, 4, 8, 16, len(x)) if c <= len(x)})
        for c in chunks:
            fns[f"chunk_{c}"] = lambda m=model, x=x, c=c: explain(m, x, chunk_size=c)
        fns["forward_only_chunk_1"] = _forward(model, x, 1)
        med = _medians(fns, args.rounds)
        rows.append(
            {
                "model": name,
                "img_size": 224,
                "method": "gradcam",
                "images": len(x),
                "threads": threads,
                "largest_output_bytes_per_image": largest,
                "auto_images_per_pass": images_per_pass(largest),
                "auto_tuned_images_per_pass": _tuned(model, x),
                "times": med,
                "loop_over_auto_wall": med["loop"]["wall_s"] / med["auto"]["wall_s"],
                "loop_over_auto_cpu": med["loop"]["cpu_s"] / med["auto"]["cpu_s"],
            }
        )
        print(
            f"[{threads} thr] passes {name} gradcam n={len(x)} (rule {images_per_pass(largest)}, "
            f"tuned {_tuned(model, x)}): "
            + ", ".join(f"{k} {v['wall_s']:.3f}" for k, v in med.items()),
            flush=True,
        )
        if heavy and name in args.heavy_models and args.heavy_images_224 > 1:
            x = x[: args.heavy_images_224]
            fns = {
                "loop": _loop(model, x, "scorecam"),
                "auto": lambda m=model, x=x: explain(m, x, method="scorecam"),
                "batch_size_64": lambda m=model, x=x: explain(
                    m, x, method="scorecam", batch_size=64
                ),
            }
            med = _medians(fns, args.rounds)
            rows.append(
                {
                    "model": name,
                    "img_size": 224,
                    "method": "scorecam",
                    "images": len(x),
                    "threads": threads,
                    "auto_images_per_pass": images_per_pass(largest),
                    "times": med,
                    "batch_64_over_auto_wall": med["batch_size_64"]["wall_s"]
                    / med["auto"]["wall_s"],
                }
            )
            print(
                f"[{threads} thr] passes {name} scorecam n={len(x)}: "
                + ", ".join(f"{k} {v['wall_s']:.3f}" for k, v in med.items()),
                flush=True,
            )
    return rows


def method_rows(args, threads: int, heavy: bool) -> list[dict]:
    rows = []
    for name in args.models:
        for size in args.sizes:
            torch.manual_seed(0)
            try:
                model = create_model(name, num_classes=10, img_size=size).eval()
            except ValueError as err:
                print(f"skip {name} at {size}: {err}")
                continue
            for method in args.methods:
                if method in HEAVY:
                    if not heavy or name not in args.heavy_models:
                        continue
                    n = args.heavy_images_224 if size >= 224 else args.heavy_images
                else:
                    n = args.images_224 if size >= 224 else args.images
                if n < 1:
                    continue
                x = torch.randn(n, model.in_chans, size, size)
                med = _medians(
                    {
                        "batched": lambda m=model, x=x, k=method: explain(m, x, method=k),
                        "loop": _loop(model, x, method),
                    },
                    args.rounds,
                )
                batched, loop = med["batched"], med["loop"]
                row = {
                    "model": name,
                    "img_size": size,
                    "method": method,
                    "images": n,
                    "threads": threads,
                    "batched_s": batched["wall_s"],
                    "loop_s": loop["wall_s"],
                    "batched_cpu_s": batched["cpu_s"],
                    "loop_cpu_s": loop["cpu_s"],
                    "speedup": loop["wall_s"] / batched["wall_s"],
                    "speedup_cpu": loop["cpu_s"] / batched["cpu_s"],
                }
                rows.append(row)
                print(
                    f"[{threads} thr] {name:12s} {size:4d} {method:12s} n={n:3d}  batched "
                    f"{row['batched_s']:8.3f} s  loop {row['loop_s']:8.3f} s  "
                    f"x{row['speedup']:5.2f} (cpu x{row['speedup_cpu']:5.2f})",
                    flush=True,
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet_pico", "resnet18"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[32, 224])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--images", type=int, default=64, help="images at 32x32")
    parser.add_argument(
        "--images-224", type=int, default=16, help="images for gradient methods at 224"
    )
    parser.add_argument(
        "--heavy-images", type=int, default=32, help="images for Score/Ablation-CAM at 32x32"
    )
    parser.add_argument(
        "--heavy-images-224", type=int, default=2, help="images for Score/Ablation-CAM at 224"
    )
    parser.add_argument(
        "--heavy-models",
        nargs="*",
        default=["resnet_pico"],
        help="models that Score-CAM and Ablation-CAM are timed on (first thread count only)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument(
        "--full-threads",
        nargs="*",
        type=int,
        default=[1],
        help="thread counts that also time every method (the others: peer and pass sweep)",
    )
    parser.add_argument("--peer-venv", default=DEFAULT_VENV)
    parser.add_argument("--skip", nargs="*", default=[], choices=["methods", "passes", "peer"])
    parser.add_argument("--out", default="benchmarks/results/explain_speed.json")
    args = parser.parse_args()
    load_before = os.getloadavg()
    started = time.time()
    arithmetic = {}
    for name in args.models:
        torch.manual_seed(0)
        arithmetic[name] = cam_arithmetic(create_model(name, num_classes=10, img_size=224), 224)
    peer: dict = {}
    passes: list[dict] = []
    rows: list[dict] = []
    loads = {}
    for j, threads in enumerate(args.threads):
        torch.set_num_threads(threads)
        heavy = j == 0
        if "peer" not in args.skip:
            peer[threads] = peer_gradcam(args, threads)
        if "passes" not in args.skip:
            passes += pass_sweep(args, threads, heavy)
        if "methods" not in args.skip and threads in args.full_threads:
            rows += method_rows(args, threads, heavy)
        loads[threads] = os.getloadavg()
    ratios = {
        "gradcam_pytorch_grad_cam_over_archbench": {
            f"{r['model']}@{r['img_size']}:{t}thr": r["ratio"]
            for t, p in peer.items()
            if isinstance(p, list)
            for r in p
        },
        "loop_over_batched": {
            f"{r['model']}@{r['img_size']}:{r['method']}:{r['threads']}thr": r["speedup"]
            for r in rows
        },
        "loop_over_batched_cpu": {
            f"{r['model']}@{r['img_size']}:{r['method']}:{r['threads']}thr": r["speedup_cpu"]
            for r in rows
        },
    }
    result = {
        "environment": environment(),
        "conditions": {
            "threads": args.threads,
            "threads_timing_every_method": args.full_threads,
            "load_average_before": load_before,
            "load_average_after_each_thread_count": loads,
            "minutes": (time.time() - started) / 60,
            "rounds": args.rounds,
            "timing": "median over alternating rounds after one warm-up round",
            "activation_bytes": ACTIVATION_BYTES,
            "heavy_models": args.heavy_models,
            "machine": "shared with other jobs",
        },
        "ratios": ratios,
        "cam_arithmetic_224": arithmetic,
        "peer_gradcam": peer,
        "pass_sweep_224": passes,
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
