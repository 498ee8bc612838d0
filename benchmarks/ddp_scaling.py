"""DDP scaling on CPU: training images/s of one process against two under torchrun, at
the same effective batch.

Each configuration runs ``torchrun --standalone --nproc_per_node=P -m archbench train``
(gloo backend; with P=1 the plain one-process path) on ``shapes`` at 32x32 for two
epochs of ``--steps`` steps at the effective batch ``--batch``; the second epoch is
timed. Images/s = images of the timed epoch over all ranks / rank 0's step time (batch
slice, augmentation, forward, backward with the gradient all-reduce, optimizer step;
validation, start-up and imports excluded). Configurations: 1 process x 1 thread,
1 process x 2 threads (the same cores as two processes) and 2 processes x 1 thread each.

Run: ``nice -n 5 .venv/bin/python benchmarks/ddp_scaling.py [MODEL ...] [--batch 64]
[--steps 20]``. Writes ``benchmarks/results/ddp_scaling.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from archbench.bench import environment

CONFIGS = ((1, 1), (1, 2), (2, 1))  # (processes, threads per process)


def run_one(model: str, procs: int, threads: int, batch: int, steps: int) -> dict:
    spec = f"shapes:img_size=32,n_train={batch * steps},n_val={batch},n_test=16"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={procs}",
            "-m",
            "archbench",
            "train",
            model,
            "--data",
            spec,
            "--epochs",
            "2",
            "--batch-size",
            str(batch),
            "--threads",
            str(threads),
            "--set",
            "adapt=false",
            "warmup_epochs=0",
            f"eval_batch_size={batch}",
            "--out",
            str(out),
        ]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            return {"error": proc.stderr[-800:]}
        res = json.loads((out / "fit_result.json").read_text())
    timed = res["history"][-1]
    return {
        "images_per_s": timed["images_per_s"],
        "step_ms": 1000 * timed["step_time_s"] / steps,
        "data_share": timed["data_time_s"] / timed["step_time_s"],
        "warmup_epoch_images_per_s": res["history"][0]["images_per_s"],
        "launch_wall_s": wall,
        "runtime": res["runtime"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*", default=["resnet_pico"], help="model names")
    ap.add_argument("--batch", type=int, default=64, help="effective (global) batch")
    ap.add_argument("--steps", type=int, default=20, help="steps per epoch (2 epochs, 2nd timed)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "ddp_scaling.json"))
    args = ap.parse_args(argv)
    load_before = list(os.getloadavg())
    rows = []
    for model in args.models:
        base = None
        for procs, threads in CONFIGS:
            row = {"model": model, "processes": procs, "threads_per_process": threads}
            row["per_rank_batch"] = args.batch // procs
            row.update(run_one(model, procs, threads, args.batch, args.steps))
            if "error" not in row:
                if (procs, threads) == (1, 1):
                    base = row["images_per_s"]
                if base:
                    row["speedup_vs_1x1"] = row["images_per_s"] / base
                print(
                    f"{model:<16} {procs} proc x {threads} thr  {row['images_per_s']:8.1f} img/s"
                    f"  step {row['step_ms']:6.1f} ms  x{row.get('speedup_vs_1x1', 1):.2f}",
                    flush=True,
                )
            else:
                print(f"{model} {procs}x{threads}: error {row['error']}", file=sys.stderr)
            rows.append(row)
    result = {
        "benchmark": "ddp_scaling",
        "conditions": {
            "dataset": f"shapes:img_size=32,n_train={args.batch * args.steps}",
            "img_size": 32,
            "effective_batch": args.batch,
            "timed_steps": args.steps,
            "warmup": "one epoch of the same steps, not timed",
            "recipe": "cpu-fast with adapt=false, warmup_epochs=0",
            "backend": "gloo (torchrun --standalone); 1 process runs the plain path",
            "threads": "threads_per_process in each row (OMP_NUM_THREADS and --threads)",
            "runs": 1,
            "load_average_1_5_15min_before": load_before,
            "load_average_1_5_15min_at_end": list(os.getloadavg()),
            "what": "images/s of the timed epoch over all ranks / rank 0's step time",
        },
        "environment": environment(),
        "results": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
