"""Eager vs ``archbench.optimize`` inference latency, with timm's eager time in the same run.

For resnet50, convnext_tiny, vit_small_patch16_224 and mixer_b16_224 at 224x224, batch 8,
2 threads, random weights, eval mode under ``torch.inference_mode``: each (library,
variant, model) runs in its own process (3 warm-up passes, then the median of ``--passes``
timed passes) and rounds alternate the order of the variants, as
``/work/shared/peers/side_by_side.py`` does. Variants: archbench eager, archbench
``optimize(model)`` (float32: BN folded, reparameterized, channels_last, linear layers
on oneDNN where timing says so, chosen at batch 8), ``optimize(...,
dtype="bf16")`` where the CPU has native bfloat16, ``optimize(..., compile=True)`` with
``--compile`` (compile time excluded: it happens in the warm-up), and timm eager where the
peers venv exists (``bash /work/shared/peers/setup.sh`` makes ``/tmp/peers-venv``; timm
imports through ``/work/shared/peers/shim``). Skips timm cleanly when the venv is absent.

    .venv/bin/python benchmarks/optimize_speed.py [--rounds 2] [--compile]

Writes ``benchmarks/results/optimize_speed.json``: per model, the median of the rounds'
medians for each variant (seconds per batch) and the ratios eager / optimized and
timm eager / optimized (> 1: the optimized model is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEERS = Path("/work/shared/peers")
CASES = [  # (archbench name, timm name)
    ("resnet50", "resnet50"),
    ("convnext_tiny", "convnext_tiny"),
    ("vit_small_patch16_224", "vit_small_patch16_224"),
    ("mixer_b16_224", "mixer_b16_224"),
]

TIMER = r"""
import statistics, sys, time, torch
variant, name, img, batch, passes = sys.argv[1:6]
img, batch, passes = int(img), int(batch), int(passes)
torch.set_num_threads(2)
torch.manual_seed(0)
if variant == "timm":
    import timm
    model = timm.create_model(name, num_classes=1000).eval()
else:
    import archbench
    model = archbench.create_model(name, num_classes=1000).eval()
    example = torch.randn(2, 3, img, img)
    if variant == "optimized":
        model = archbench.optimize(model, example_input=example)
    elif variant == "bf16":
        model = archbench.optimize(model, dtype="bf16", example_input=example)
    elif variant == "compiled":
        model = archbench.optimize(model, compile=True, example_input=example)
x = torch.randn(batch, 3, img, img)
with torch.inference_mode():
    for _ in range(3):
        model(x)
    times = []
    for _ in range(passes):
        t0 = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t0)
print(statistics.median(times))
"""


def _time(python: str, variant: str, name: str, args: argparse.Namespace, env: dict) -> float:
    cmd = [python, "-c", TIMER, variant, name, str(args.img), str(args.batch), str(args.passes)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    if r.returncode:
        raise SystemExit(f"{variant} {name} failed:\n{r.stderr[-1500:]}")
    return float(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--peers-python", default="/tmp/peers-venv/bin/python")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--passes", type=int, default=7)
    ap.add_argument("--img", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--compile", action="store_true", help="also time optimize(compile=True)")
    ap.add_argument("--models", nargs="*", help="archbench names (default: the four cases)")
    ap.add_argument("--out", default=str(HERE / "results" / "optimize_speed.json"))
    args = ap.parse_args()

    import torch

    from archbench.bench import environment
    from archbench.optimize import bf16_supported

    torch.set_num_threads(2)
    variants = ["eager", "optimized"]
    bf16_ok, bf16_why = bf16_supported("cpu")
    if bf16_ok:
        variants.append("bf16")
    if args.compile:
        variants.append("compiled")
    has_timm = Path(args.peers_python).exists()
    if has_timm:
        variants.append("timm")
    else:
        print(f"note: {args.peers_python} not found; timm eager times skipped")
    base_env = dict(os.environ, OMP_NUM_THREADS="2")
    timm_env = dict(base_env, PYTHONPATH=str(PEERS / "shim"))
    cases = [c for c in CASES if not args.models or c[0] in args.models]
    results = {}
    for ours, theirs in cases:
        times: dict[str, list[float]] = {v: [] for v in variants}
        for r in range(args.rounds):
            order = variants if r % 2 == 0 else variants[::-1]
            for v in order:
                if v == "timm":
                    t = _time(args.peers_python, "timm", theirs, args, timm_env)
                else:
                    t = _time(sys.executable, v, ours, args, base_env)
                times[v].append(t)
        med = {v: statistics.median(ts) for v, ts in times.items()}
        rec = {"seconds": med, "all_seconds": times}
        for v in variants:
            if v not in ("eager", "timm"):
                rec[f"eager_over_{v}"] = med["eager"] / med[v]
                if has_timm:
                    rec[f"timm_over_{v}"] = med["timm"] / med[v]
        if has_timm:
            rec["timm_over_eager"] = med["timm"] / med["eager"]
        results[ours] = rec
        line = "  ".join(f"{v} {1e3 * s:7.1f} ms" for v, s in med.items())
        print(f"{ours:24s} {line}", flush=True)
    out = {
        "conditions": {
            "img": args.img,
            "batch": args.batch,
            "threads": 2,
            "passes": args.passes,
            "rounds": args.rounds,
            "warmup": 3,
            "timing": "per process: median of the timed passes; per variant: median over rounds",
            "weights": "random init, eval mode, torch.inference_mode",
            "bf16": "timed" if bf16_ok else f"not timed: {bf16_why}",
            "compile": "timed, compile time excluded" if args.compile else "not timed",
            "load_avg_end": list(os.getloadavg()),
        },
        "environment": environment(),
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
