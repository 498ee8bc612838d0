"""Eager speed against timm on every architecture both libraries have, in one run.

For each architecture of ``timm_parity.CASES`` (the pairs whose timm weights load into
archbench and give timm's logits) one process builds the timm model and the archbench
model side by side, with random weights, and times three cases:

- ``inf224``: inference at 224x224 (the case's own size where it differs), batch 8;
- ``train224``: a training step (forward, cross-entropy, backward, SGD step) at the same
  size, batch 8;
- ``train32``: a training step at 32x32, batch 64, the CPU-scale regime (both models
  built for 32x32 where they take an ``img_size``; skipped with the reason where either
  library cannot run the architecture at that size).

Both models live in one process and their steps alternate (the order flips every
repetition), so the machine's load and the process's allocator state fall on both
alike; each case reports both medians and the median of the per-repetition ratios
``timm time / archbench time`` (> 1: archbench is faster). Two processes on a shared
machine differ by more than the gaps being looked for; one process does not.

Verdicts. Each case's per-repetition ratios are paired measurements of one quantity, so
their logarithms are tested against 0 with Student's one-sample t (``scipy.stats.ttest_1samp``,
``reps - 1`` degrees of freedom); the geometric mean ratio and its 95% interval are
``exp(mean ± t(0.975) · se)`` of the log ratios. The p-values of all cases of one run are
adjusted together with Holm's method (``archbench.bench.stats.holm``), and each case gets
a verdict: ``archbench faster`` / ``timm faster`` (adjusted p < 0.05), ``within 5%``
(no difference detected and the whole interval inside [0.95, 1.05]) or ``not resolved``
(no difference detected, but the interval is wider than that: more repetitions needed).

Each case also records the operator calls of one step of each model (counted by a
``TorchDispatchMode``) that the other model does not make: a structural difference
(an extra copy, a missing in-place op) shows there, whatever the timings say.

``--retain-heap`` calls ``archbench.retain_freed_memory()`` at the start of every process:
glibc then keeps freed memory instead of trimming it, so neither model's steps take the
page faults of re-growing the heap (``docs/performance.md``, "Page faults"). Both models
share the process, so the setting applies to both alike.

The process runs in the peers venv (``/work/shared/peers``; ``bash setup.sh`` makes
``/tmp/peers-venv``), with archbench's ``src`` on ``PYTHONPATH``; the benchmark skips
cleanly when the venv is absent.

    .venv/bin/python benchmarks/timm_speed.py [--only resnet50 ...] [--cases inf224,train32]
        [--reps 7] [--threads 2] [--retain-heap]

Writes ``benchmarks/results/timm_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEERS = Path("/work/shared/peers")
SRC = HERE.parent / "src"
sys.path.insert(0, str(HERE))
from timm_parity import CASES  # noqa: E402

ALL_CASES = ("inf224", "train224", "train32")

WORKER = r"""
import collections, json, resource, statistics, sys, time
import torch
from torch.utils._python_dispatch import TorchDispatchMode

timm_name, ours, side, cases, reps, threads, retain = sys.argv[1:8]
side, reps, threads = int(side), int(reps), int(threads)
torch.set_num_threads(threads)
import timm
import archbench

if retain == "1":  # both models share the process, so both run on the retained heap
    retained = archbench.retain_freed_memory()
    if not retained["applied"]:
        raise SystemExit(f"--retain-heap cannot be applied: {retained['reason']}")


class Calls(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls[func.__name__] += 1
        return func(*args, **(kwargs or {}))


def create(factory, name, img):
    torch.manual_seed(0)
    if img is not None:  # built for the size where the constructor takes one
        try:
            return factory(name, num_classes=1000, img_size=img)
        except TypeError as err:
            if "img_size" not in str(err):
                raise
    return factory(name, num_classes=1000)


def build(img):
    return {
        "timm": create(timm.create_model, timm_name, img),
        "archbench": create(archbench.create_model, ours, img),
    }


def stepper(model, mode, x, y):
    if mode == "inf":
        model.eval()

        def step():
            with torch.inference_mode():
                model(x)
    else:
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

        def step():
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return step


def run_case(case):
    mode = "inf" if case.startswith("inf") else "train"
    img, batch = (side, 8) if case.endswith("224") else (32, 64)
    try:
        models = build(None if img == side else img)
    except Exception as err:
        return {"skipped": f"{type(err).__name__}: {str(err)[:300]}"}
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, img, img, generator=g)
    y = torch.randint(0, 1000, (batch,), generator=g)
    calls = {}
    for lib, m in models.items():  # one step under the counter: the operator mix
        probe = stepper(m, mode, x[:2], y[:2])
        try:
            with Calls() as c:
                probe()
        except Exception as err:
            return {"skipped": f"{lib}: {type(err).__name__}: {str(err)[:300]}"}
        calls[lib] = c.calls
    steps = {lib: stepper(m, mode, x, y) for lib, m in models.items()}
    for _ in range(2):
        for s in steps.values():
            s()
    times = {lib: [] for lib in steps}
    faults = {lib: [] for lib in steps}
    ratios = []
    for r in range(reps):
        order = ("timm", "archbench") if r % 2 == 0 else ("archbench", "timm")
        t = {}
        for lib in order:
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            steps[lib]()
            t[lib] = time.perf_counter() - t0
            faults[lib].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
            times[lib].append(t[lib])
        ratios.append(t["timm"] / t["archbench"])
    med = {lib: statistics.median(v) for lib, v in times.items()}
    return {
        "img_size": img,
        "batch": batch,
        "timm_ms": med["timm"] * 1e3,
        "archbench_ms": med["archbench"] * 1e3,
        "ratio": med["timm"] / med["archbench"],
        "paired_ratio": statistics.median(ratios),
        "ratio_min_max": [min(ratios), max(ratios)],
        "ratios": ratios,
        "page_faults": {lib: statistics.median(v) for lib, v in faults.items()},
        "calls": {lib: sum(c.values()) for lib, c in calls.items()},
        "only_timm": dict(calls["timm"] - calls["archbench"]),
        "only_archbench": dict(calls["archbench"] - calls["timm"]),
    }


print(json.dumps({case: run_case(case) for case in cases.split(",")}))
"""


EQUIVALENCE = 0.05  # "within 5%": the whole 95% interval inside [0.95, 1.05]


def ratio_statistics(ratios: list[float]) -> dict:
    """Geometric mean of paired per-repetition ratios, its 95% t interval and the two-sided
    p-value of "no difference" (one-sample t on the log ratios)."""
    import math

    from scipy import stats

    logs = [math.log(r) for r in ratios]
    mean = sum(logs) / len(logs)
    if len(logs) < 2:
        return {"geo_mean": math.exp(mean), "ci95": None, "p": None}
    if max(logs) == min(logs):  # no spread: the t statistic is undefined
        return {"geo_mean": math.exp(mean), "ci95": [math.exp(mean)] * 2, "p": float(mean == 0)}
    test = stats.ttest_1samp(logs, 0.0)
    lo, hi = test.confidence_interval(0.95)
    return {
        "geo_mean": math.exp(mean),
        "ci95": [math.exp(lo), math.exp(hi)],
        "p": float(test.pvalue),
    }


def add_verdicts(rows: list, cases: list[str]) -> None:
    """Holm-adjusted verdict of every timed case of ``rows`` (in place)."""
    from archbench.bench.stats import holm

    cells = [row[c] for row in rows for c in cases if len(row.get(c, {}).get("ratios", [])) > 1]
    for cell in cells:
        cell["stats"] = ratio_statistics(cell["ratios"])
    adjusted = holm([cell["stats"]["p"] for cell in cells])
    for cell, p_adj in zip(cells, adjusted):
        st = cell["stats"]
        st["p_holm"] = p_adj
        lo, hi = st["ci95"]
        if p_adj is not None and p_adj < 0.05:
            st["verdict"] = "archbench faster" if st["geo_mean"] > 1 else "timm faster"
        elif lo >= 1 - EQUIVALENCE and hi <= 1 + EQUIVALENCE:
            st["verdict"] = "within 5%"
        else:
            st["verdict"] = "not resolved"


def _write(args: argparse.Namespace, rows: list, t_start: float, load_before) -> None:
    """The JSON of the pairs timed so far (rewritten after every pair: a long run that is
    stopped keeps what it measured)."""
    cases = args.cases.split(",")
    add_verdicts(rows, cases)
    summary = {
        c: {
            "cases": sum(1 for r in rows if "paired_ratio" in r.get(c, {})),
            "below_1": sorted(
                r["archbench"] for r in rows if r.get(c, {}).get("paired_ratio", 1.0) < 1.0
            ),
            "verdicts": {
                v: sorted(
                    r["archbench"]
                    for r in rows
                    if r.get(c, {}).get("stats", {}).get("verdict") == v
                )
                for v in ("archbench faster", "within 5%", "not resolved", "timm faster")
            },
        }
        for c in cases
    }
    result = {
        "conditions": {
            "threads": args.threads,
            "reps": args.reps,
            "retained_heap": args.retain_heap,
            "load_avg_before": load_before,
            "load_avg_after": os.getloadavg(),
            "wall_s": time.time() - t_start,
            "ratio": "timm time / archbench time; > 1: archbench is faster",
            "verdicts": "one-sample t on log per-repetition ratios, Holm-adjusted over the "
            "run's cases; 'within 5%': 95% interval inside [0.95, 1.05]",
        },
        "summary": summary,
        "cases": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--peers-python", default="/tmp/peers-venv/bin/python")
    ap.add_argument("--only", nargs="*", help="archbench names to run (default: every case)")
    ap.add_argument("--cases", default=",".join(ALL_CASES))
    ap.add_argument("--reps", type=int, default=7, help="timed repetitions per library")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--retain-heap",
        action="store_true",
        help="call archbench.retain_freed_memory() in every process (glibc keeps freed "
        "memory: no page faults from trimmed heaps, for both libraries' models alike)",
    )
    ap.add_argument("--out", default=str(HERE / "results" / "timm_speed.json"))
    args = ap.parse_args()
    unknown = set(args.cases.split(",")) - set(ALL_CASES)
    if unknown:
        ap.error(f"unknown case(s) {sorted(unknown)}; choose from {list(ALL_CASES)}")
    if not Path(args.peers_python).is_file():
        print(
            f"skipped: no peers venv at {args.peers_python} "
            f"(run `bash {PEERS}/setup.sh` to make one)"
        )
        return 0
    env = dict(
        os.environ,
        PYTHONPATH=f"{PEERS / 'shim'}{os.pathsep}{SRC}",
        OMP_NUM_THREADS=str(args.threads),
    )
    rows = []
    t_start = time.time()
    load_before = os.getloadavg()
    for timm_name, ours, side in CASES:
        if args.only and ours not in args.only:
            continue
        cmd = [args.peers_python, "-c", WORKER, timm_name, ours, str(side), args.cases]
        proc = subprocess.run(
            cmd + [str(args.reps), str(args.threads), "1" if args.retain_heap else "0"],
            env=env,
            capture_output=True,
            text=True,
        )
        row: dict = {"timm": timm_name, "archbench": ours}
        if proc.returncode:
            row["error"] = proc.stderr.strip()[-800:]
        else:
            row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
        rows.append(row)
        cells = [
            f"{c} {row[c]['paired_ratio']:.2f} (faults {row[c]['page_faults']['timm']:.0f}"
            f"/{row[c]['page_faults']['archbench']:.0f})"
            if "paired_ratio" in row.get(c, {})
            else f"{c} -"
            for c in args.cases.split(",")
        ]
        print(f"{ours:28s} " + "  ".join(cells), flush=True)
        _write(args, rows, t_start, load_before)
    _write(args, rows, t_start, load_before)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
