"""Eager vs ``archbench.optimize`` inference latency, with timm's eager time in the same run.

For resnet50, convnext_tiny, vit_small_patch16_224 and mixer_b16_224 at 224x224, batch 8,
2 threads, random weights, eval mode under ``torch.inference_mode``. One process per model
holds every variant: archbench eager, ``optimize(model)`` (float32: BN folded,
reparameterized, channels_last, linear layers on oneDNN where its per-shape timing says
so, with ``example_input`` at the timed batch), ``optimize(..., dtype="bf16")`` where the
CPU has native bfloat16, ``optimize(..., int8_linear=True)`` where PyTorch has its x86
int8 kernel (int8 weights, activations quantized per call: a precision trade, reported
with the relative error of its features and logits against float32),
``optimize(..., compile=True)`` with ``--compile`` (compiled during the warm-up) and timm
eager. After 3 warm-up passes each repetition times every
variant once, the order rotating, and each ratio is the median of the per-repetition
ratios: separate processes on a shared 2-core machine differed by more than the effects
measured here (the same model's eager time varied 0.77-1.22 s between two processes).

timm comes from the peers venv (``bash /work/shared/peers/setup.sh`` makes
``/tmp/peers-venv``; the process runs there with archbench's ``src`` and
``/work/shared/peers/shim`` on ``PYTHONPATH``); without it the timm column is skipped.

With ``--retain-heap`` every model is also timed in processes that call
``archbench.retain_freed_memory()`` first (glibc keeps freed blocks, so a pass takes no
page faults for memory the last one freed), ``--processes`` of each kind, alternating
with default processes. The setting is process-wide, so timm runs under it too in those
processes; ``across_processes`` sets timm's median in the default processes (timm as a
user runs it) against each variant's median in the retained ones. Every variant's page
faults per pass (``ru_minflt``) are recorded either way. With ``--alone`` each
configuration (timm eager; archbench eager and optimized, default heap; both with the heap
retained) runs alone in its process instead, as a user serving one model runs it,
``--processes`` of each, alternating; the JSON then holds each configuration's median,
its per-process medians and faults, and timm's default median over each.

    .venv/bin/python benchmarks/optimize_speed.py [--reps 9] [--compile] [--models NAME ...]
        [--retain-heap | --alone] [--processes 2]

Writes ``benchmarks/results/optimize_speed.json``: per model, the median time of each
variant (seconds per batch), the ratios eager / optimized, timm eager / optimized and
timm / eager (> 1: the right-hand side is faster) with their min and max over the
repetitions, and optimize's report (steps, the linear layers it timed and packed).
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

WORKER = r"""
import json, resource, statistics, sys, time, torch
ours, theirs, img, batch, reps, variants, heap = sys.argv[1:8]
img, batch, reps, variants = int(img), int(batch), int(reps), variants.split(",")
torch.set_num_threads(2)
import archbench
if heap.startswith("retained"):
    assert archbench.retain_freed_memory()["applied"]
torch.manual_seed(0)
base = archbench.create_model(ours, num_classes=1000).eval()
example = torch.randn(batch, 3, img, img)  # optimize checks and chooses at the served batch
models, reports = {"eager": base}, {}
for v in variants:
    if v == "timm":
        import timm
        torch.manual_seed(0)
        models[v] = timm.create_model(theirs, num_classes=1000).eval()
    elif v != "eager":
        kw = {"bf16": {"dtype": "bf16"}, "compiled": {"compile": True},
              "int8": {"int8_linear": True}}.get(v, {})
        models[v] = archbench.optimize(base, example_input=example, **kw)
        reports[v] = models[v].optimize_report
if heap.endswith("alone"):  # only the named variants run in this process
    models = {v: m for v, m in models.items() if v in variants}
x = torch.randn(batch, 3, img, img)
if "int8" in models:  # how far int8 moves the outputs (random weights: logits may be ~0)
    with torch.inference_mode():
        for part in ("forward_features", "__call__"):
            ref, got = getattr(base, part)(x), getattr(models["int8"], part)(x)
            rel = ((got - ref).norm() / ref.norm().clamp_min(1e-30)).item()
            reports["int8"][f"rel_l2_error_{part.strip('_')}"] = rel
names = list(models)
times = {v: [] for v in names}
faults = {v: [] for v in names}
with torch.inference_mode():
    for _ in range(3):
        for v in names:
            models[v](x)
    for r in range(reps):
        k = r % len(names)
        for v in names[k:] + names[:k]:  # the order rotates every repetition
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            models[v](x)
            times[v].append(time.perf_counter() - t0)
            faults[v].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(json.dumps({"times": times, "faults": faults, "reports": reports}, default=str))
"""


def _run(
    python: str, ours: str, theirs: str, variants: list[str], args, env: dict, heap: str
) -> dict:
    cmd = [python, "-c", WORKER, ours, theirs, str(args.img), str(args.batch), str(args.reps)]
    r = subprocess.run(cmd + [",".join(variants), heap], capture_output=True, text=True, env=env)
    if r.returncode:
        raise SystemExit(f"{ours} failed:\n{r.stderr[-1500:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _summarize(runs: list[dict], variants: list[str], has_timm: bool) -> dict:
    """Medians, within-process ratios and page faults of one heap setting's processes
    (the repetitions of several processes are pooled, pairs kept within a process)."""
    times = {v: [t for got in runs for t in got["times"][v]] for v in runs[0]["times"]}
    rec: dict = {
        "seconds": {v: statistics.median(ts) for v, ts in times.items()},
        "all_seconds": times,
        "page_faults": {
            v: statistics.median(f for got in runs for f in got["faults"][v]) for v in times
        },
        "processes": len(runs),
    }
    for v in variants:
        if v not in ("eager", "timm"):
            rec[f"eager_over_{v}"] = _ratio(times, "eager", v)
            if has_timm:
                rec[f"timm_over_{v}"] = _ratio(times, "timm", v)
            rec[f"{v}_report"] = runs[0]["reports"].get(v)
    if has_timm:
        rec["timm_over_eager"] = _ratio(times, "timm", "eager")
    return rec


def _ratio(times: dict[str, list[float]], a: str, b: str) -> dict[str, float]:
    """Median (and range) over repetitions of time(a) / time(b): > 1 means b is faster."""
    per_rep = [p / q for p, q in zip(times[a], times[b])]
    return {"median": statistics.median(per_rep), "min": min(per_rep), "max": max(per_rep)}


ALONE = [
    ("timm", "default"),
    ("eager", "default"),
    ("optimized", "default"),
    ("optimized", "retained"),
    ("eager", "retained"),
]


def _alone(python: str, cases: list, args, env: dict, has_timm: bool) -> None:
    """Each variant alone in its process, as a user serving one model runs it: a process
    that holds several models keeps a larger heap, and its frees rarely reach the heap's
    top, so it takes fewer page faults than a process with one model (the retained-heap
    gain shows only here). Medians over the pooled repetitions of ``--processes``
    processes per configuration; the configurations' processes alternate."""
    configs = [c for c in ALONE if has_timm or c[0] != "timm"]
    results = {}
    for ours, theirs in cases:
        runs: dict[str, list[dict]] = {f"{v}@{h}": [] for v, h in configs}
        for i in range(args.processes):
            for v, h in configs if i % 2 == 0 else configs[::-1]:
                got = _run(python, ours, theirs, [v], args, env, f"{h}-alone")
                runs[f"{v}@{h}"].append({"times": got["times"][v], "faults": got["faults"][v]})
        rec = {
            key: {
                "seconds": statistics.median(t for r in got for t in r["times"]),
                "process_medians": [statistics.median(r["times"]) for r in got],
                "page_faults": statistics.median(f for r in got for f in r["faults"]),
            }
            for key, got in runs.items()
        }
        if has_timm:
            rec["timm_default_over"] = {
                key: rec["timm@default"]["seconds"] / rec[key]["seconds"]
                for key in runs
                if key != "timm@default"
            }
        results[ours] = rec
        print(
            f"{ours:24s} "
            + "  ".join(
                f"{k} {1e3 * r['seconds']:.0f} ms ({r['page_faults']:.0f} faults)"
                for k, r in rec.items()
                if k in runs
            )
            + "  |  timm/"
            + "  ".join(f"{k} {x:.2f}" for k, x in rec.get("timm_default_over", {}).items()),
            flush=True,
        )
    _write(
        args,
        {
            "processes": args.processes,
            "timing": "one variant per process; configurations alternate process by process",
        },
        results,
    )


def _write(args, conditions: dict, results: dict) -> None:
    """The run's JSON: the common conditions, the mode's own, the environment, results."""
    from archbench.bench import environment

    out = {
        "conditions": {
            "img": args.img,
            "batch": args.batch,
            "threads": 2,
            "reps": args.reps,
            "weights": "random init, eval mode, torch.inference_mode",
            **conditions,
        },
        "environment": environment(),
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--peers-python", default="/tmp/peers-venv/bin/python")
    ap.add_argument("--reps", type=int, default=9, help="timed repetitions of every variant")
    ap.add_argument("--img", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--compile", action="store_true", help="also time optimize(compile=True)")
    ap.add_argument("--no-int8", action="store_true", help="skip optimize(int8_linear=True)")
    ap.add_argument("--models", nargs="*", help="archbench names (default: the four cases)")
    ap.add_argument(
        "--retain-heap",
        action="store_true",
        help="also time every variant in processes that keep freed memory "
        "(archbench.retain_freed_memory), alternating with default processes",
    )
    ap.add_argument(
        "--processes",
        type=int,
        default=2,
        help="with --retain-heap or --alone: processes per setting",
    )
    ap.add_argument(
        "--alone",
        action="store_true",
        help="instead: one variant per process (timm eager, archbench eager and optimized, "
        "each with the default and the retained heap), --processes of each, alternating",
    )
    ap.add_argument("--out", default=str(HERE / "results" / "optimize_speed.json"))
    args = ap.parse_args()

    import torch

    from archbench.layers.int8_linear import int8_linear_available
    from archbench.optimize import bf16_supported

    torch.set_num_threads(2)
    load_start = list(os.getloadavg())
    variants = ["optimized"]
    bf16_ok, bf16_why = bf16_supported("cpu")
    if bf16_ok:
        variants.append("bf16")
    int8_ok, int8_why = int8_linear_available()
    if int8_ok and not args.no_int8:
        variants.append("int8")
    if args.compile:
        variants.append("compiled")
    has_timm = Path(args.peers_python).exists()
    if has_timm:
        variants.append("timm")
    else:
        print(f"note: {args.peers_python} not found; timm eager times skipped")
    env = dict(os.environ, OMP_NUM_THREADS="2")
    python = sys.executable
    if has_timm:  # timm's venv, with archbench's source on the path: both in one process
        python = args.peers_python
        env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent / "src"), str(PEERS / "shim")])
    cases = [c for c in CASES if not args.models or c[0] in args.models]
    if args.alone:
        _alone(python, cases, args, env, has_timm)
        return
    heaps = ["default", "retained"] if args.retain_heap else ["default"]
    results = {}
    for ours, theirs in cases:
        runs: dict[str, list[dict]] = {h: [] for h in heaps}
        for i in range(args.processes if args.retain_heap else 1):
            for heap in heaps if i % 2 == 0 else heaps[::-1]:  # alternating processes
                runs[heap].append(_run(python, ours, theirs, variants, args, env, heap))
        by_heap = {h: _summarize(got, variants, has_timm) for h, got in runs.items()}
        rec = by_heap["default"]
        if args.retain_heap:
            rec["retained_heap"] = by_heap["retained"]
            timm_default = rec["seconds"].get("timm")
            rec["across_processes"] = {
                f"timm_default_over_{v}_retained": timm_default / t
                for v, t in by_heap["retained"]["seconds"].items()
                if timm_default
            }
        results[ours] = rec
        for h, r in by_heap.items():
            line = "  ".join(f"{v} {1e3 * t:7.1f} ms" for v, t in r["seconds"].items())
            ratios = "  ".join(
                f"{k} {x['median']:.2f}"
                for k, x in r.items()
                if k.startswith(("eager_over", "timm_over"))
            )
            print(f"{ours:24s} [{h}] {line}  |  {ratios}", flush=True)
        if args.retain_heap:
            print(
                f"{ours:24s} "
                + "  ".join(f"{k} {x:.2f}" for k, x in rec["across_processes"].items()),
                flush=True,
            )
    conditions = {
        "warmup": 3,
        "timing": "one process per model holds every variant; each repetition times each "
        "variant once, the order rotating; ratios are medians of per-repetition ratios",
        "bf16": "timed" if bf16_ok else f"not timed: {bf16_why}",
        "compile": "timed, compile time excluded" if args.compile else "not timed",
        "int8": "timed (optimize int8_linear=True: int8 weights per channel, activations "
        "quantized per call)"
        if "int8" in variants
        else f"not timed: {'--no-int8' if int8_ok else int8_why}",
        "heap": "default and retained (retain_freed_memory) processes, alternating; "
        "across_processes: timm's median in default processes over each variant's in "
        "retained ones"
        if args.retain_heap
        else "glibc malloc defaults",
        "load_avg_start": load_start,
        "load_avg_end": list(os.getloadavg()),
    }
    _write(args, conditions, results)


if __name__ == "__main__":
    main()
