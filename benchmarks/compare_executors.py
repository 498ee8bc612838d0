"""Wall-clock of one comparison on the local executor and on a local Ray cluster.

The same spec (default: resnet_pico and mixer_pico, 2 seeds, 2 epochs on a 512-image
``shapes``) runs three times into fresh folders: locally one run at a time, locally with
``--jobs 2``, and on a Ray head started here on loopback with the machine's CPUs
(``ray start --head``), with ``jobs`` 2. Each row gives the total wall-clock and the
phases ``run_compare`` reports. Local and Ray at the same ``jobs`` (the same threads per
run) must give identical accuracies, and the script says whether they do. Needs ``pip install archbench[ray]``.

    python benchmarks/compare_executors.py [--epochs 2] [--seeds 2] [--n-train 512]

Results: ``benchmarks/results/compare_executors.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep Ray on loopback
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("val_top1", "test_top1", "test_correct")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_head(cpus: int) -> tuple[subprocess.Popen, str, str]:
    port, temp = _free_port(), tempfile.mkdtemp(prefix="rayb", dir="/tmp")
    head = subprocess.Popen(
        [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block"]
        + ["--port", str(port), "--num-cpus", str(cpus), "--node-ip-address", "127.0.0.1"]
        + ["--temp-dir", temp, "--include-dashboard=false", "--disable-usage-stats"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return head, f"127.0.0.1:{port}", temp
        except OSError:
            if head.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the Ray head did not start") from None
            time.sleep(0.2)


def _stop_head(head: subprocess.Popen, temp: str) -> None:
    head.send_signal(signal.SIGTERM)
    try:
        head.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()
    shutil.rmtree(temp, ignore_errors=True)


def main() -> None:
    from archbench.bench.compare import CompareSpec, run_compare

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet_pico", "mixer_pico"])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--n-train", type=int, default=512)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    data = f"shapes:n_train={args.n_train},n_val=128,n_test=256"
    work = Path(tempfile.mkdtemp(prefix="cmp_exec"))
    rows, accuracies = [], {}
    head, address, temp = _start_head(cores)
    try:
        for label, extra in (
            ("local, jobs 1", {"jobs": 1}),
            ("local, jobs 2", {"jobs": 2}),
            ("ray (local head), jobs 2", {"jobs": 2, "executor": "ray", "ray_address": address}),
        ):
            spec = CompareSpec.from_dict(
                dict(
                    models=args.models,
                    data=data,
                    epochs=args.epochs,
                    seeds=args.seeds,
                    explain=False,
                    out=str(work / label.split(",")[0].split()[0] / str(extra["jobs"])),
                    **extra,
                )
            )
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            res = run_compare(spec, log=lambda *_: None)
            wall = time.perf_counter() - t0
            records = [json.loads(x) for x in (res["out"] / "results.jsonl").open()]
            accuracies[label] = {r["key"]: [r.get(k) for k in KEYS] for r in records}
            rows.append(
                {
                    "executor": label,
                    "wall_s": round(wall, 2),
                    "phases_s": {k: round(v, 2) for k, v in res["phases"].items()},
                    "load_avg_1m_before": load,
                }
            )
            print(f"{label:28s} {wall:7.1f} s  {rows[-1]['phases_s']}")
    finally:
        _stop_head(head, temp)
        shutil.rmtree(work, ignore_errors=True)
    # the same jobs give the same threads per run, hence the same numbers on both executors
    same = accuracies["local, jobs 2"] == accuracies["ray (local head), jobs 2"]
    same_jobs1 = accuracies["local, jobs 1"] == accuracies["local, jobs 2"]
    print(f"identical accuracies, local and Ray at jobs 2: {same}")
    print(f"identical accuracies, local jobs 1 and jobs 2 (2 threads vs 1 per run): {same_jobs1}")
    import torch

    out = {
        "spec": {
            "models": args.models,
            "data": data,
            "epochs": args.epochs,
            "seeds": args.seeds,
            "recipe": "cpu-fast",
        },
        "machine": {"cpu_count": cores, "torch": torch.__version__},
        "rows": rows,
        "identical_accuracies_local_vs_ray_jobs2": same,
        "identical_accuracies_local_jobs1_vs_jobs2": same_jobs1,
        "load_avg_1m_after": os.getloadavg()[0],
        "note": "wall-clock includes planning, measurement and the report; the Ray row "
        "includes connecting to the head and starting its worker processes",
    }
    path = ROOT / "benchmarks" / "results" / "compare_executors.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
