"""Where the main job's time goes.

Two measurements, written to ``benchmarks/results/main_job.json``:

1. The wall-clock of ``archbench main`` (what ``make run`` runs) in a fresh output folder,
   from process start to exit, and its split into set-up (planning, data, spec checks),
   training, measurement (parameters, MACs, latency, throughput, memory), explanations
   and the report, as ``run_compare`` times them.
2. Training images/s of each main-job model, one thread, at the main job's resolution and
   at 32x32: float32, bf16 autocast (where the CPU has bf16 instructions; otherwise
   recorded as not supported rather than timed as slow emulation), and channels_last. A
   step is forward, loss, backward and an AdamW step, as in the engine; warm-up steps are
   excluded and the median of several timed blocks is reported.

Run: ``.venv/bin/python benchmarks/main_job.py [--skip-main] [--steps 8]`` on an idle
machine (the figures are meaningless when other jobs share the cores).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from archbench.bench import environment
from archbench.commands.main import DEFAULT_DATA, DEFAULT_MODELS
from archbench.data import load_dataset
from archbench.models import create_model


def cpu_has_bf16() -> bool:
    """True when the CPU advertises native bf16 arithmetic (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def time_main(out: Path) -> dict:
    """Run ``archbench main --json`` in a fresh folder; wall-clock and the phase split."""
    exe = Path(sys.executable).with_name("archbench")
    cmd = [str(exe), "main", "--out", str(out), "--json"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"archbench main failed ({proc.returncode}): {proc.stderr[-2000:]}")
    summary = json.loads(proc.stdout)
    phases = summary.get("phases", {})
    accounted = sum(phases.values())
    return {
        "command": " ".join(cmd[1:]),
        "wall_s": wall,
        "phases_s": phases,
        "process_start_and_exit_s": wall - accounted,
        "best_test_top1": max(
            (r["test_top1"] for r in summary["rows"] if r.get("test_top1") is not None),
            default=None,
        ),
        "rows": [
            {k: r.get(k) for k in ("model", "n", "test_top1", "verdict", "vs_best")}
            for r in summary["rows"]
        ],
    }


def images_per_s(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    bf16: bool,
    channels_last: bool,
    steps: int,
    blocks: int = 3,
) -> float:
    """Median images/s over ``blocks`` blocks of ``steps`` training steps (after warm-up)."""
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    rates = []
    for _ in range(blocks):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        rates.append(steps * x.shape[0] / (time.perf_counter() - t0))
    return statistics.median(rates)


def training_speed(steps: int, batch: int) -> list[dict]:
    data = load_dataset(DEFAULT_DATA, seed=0)
    main_size = int(data.train.images.shape[-1])
    bf16_ok = cpu_has_bf16()
    rows = []
    for name in DEFAULT_MODELS:
        for size in sorted({main_size, 32}):
            row: dict = {"model": name, "img_size": size, "batch": batch}
            for label, bf16, cl in (
                ("fp32", False, False),
                ("bf16", True, False),
                ("channels_last", False, True),
            ):
                if bf16 and not bf16_ok:
                    row[label] = "not supported by this CPU (no bf16 instructions)"
                    continue
                torch.manual_seed(0)
                model = create_model(
                    name, num_classes=data.num_classes, in_chans=data.in_chans, img_size=size
                )
                x = torch.randn(batch, data.in_chans, size, size)
                y = torch.randint(0, data.num_classes, (batch,))
                row[label] = images_per_s(model, x, y, bf16=bf16, channels_last=cl, steps=steps)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--skip-main", action="store_true", help="only the training-speed table")
    ap.add_argument("--steps", type=int, default=8, help="training steps per timed block")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "main_job.json"))
    args = ap.parse_args(argv)
    result: dict = {"environment": environment(), "load_avg_before": os.getloadavg()}
    if not args.skip_main:
        with tempfile.TemporaryDirectory() as tmp:
            result["main"] = time_main(Path(tmp) / "main")
        print(json.dumps(result["main"], indent=2), flush=True)
    torch.set_num_threads(1)
    result["training_images_per_s_1_thread"] = training_speed(args.steps, args.batch)
    result["load_avg_after"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
