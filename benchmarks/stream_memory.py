"""Peak memory and images/s of the streamed folder loader against the in-memory loader.

For each image count (default 1k, 10k, 100k) and size (32x32 PNG, 224x224 JPEG) a folder
of generated images (10 classes, smooth colour fields, cached under ``--work``) is loaded
as ``folder:PATH,img_size=S`` (in memory: every image decoded into one uint8 tensor) and
as ``folder:PATH,img_size=S,stream=1,workers=W`` (records in memory, images decoded in W
DataLoader worker processes), and one epoch of training batches is read through the
loader the engine uses (:func:`archbench.data.make_loader`), without a model.

Each measurement runs in a fresh process, so that peak RSS is its own:
``peak_rss_mb`` is the main process's peak (``ru_maxrss``), ``worker_peak_rss_mb`` the
largest peak of a finished child (the workers; ``RUSAGE_CHILDREN``). ``load_s`` is
``load_dataset`` (for streaming: listing, the decode pass that finds unreadable files
and the pass that measures mean/std); ``epoch_images_per_s`` is training images read
per second of one epoch at ``--batch``. 224x224 at 100k is skipped unless
``--with-224-100k`` (it needs ~15 GB in memory and ~1 GB of JPEGs) or
``--stream-only-above N`` with N below 100k: counts above N are measured with the
streamed loader only (the in-memory row is recorded as skipped). Each row records the
1-minute load average before and after its measurement (``loadavg_before/after``).

Run: ``.venv/bin/python benchmarks/stream_memory.py [--counts 1000 10000 100000]
[--sizes 32 224] [--workers 2] [--batch 256] [--stream-only-above N] [--append]``.
Writes ``benchmarks/results/stream_memory.json`` (``--out``; with ``--append`` the rows
are merged into an existing file, replacing rows of the same size, count and loader)
and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CLASSES = 10


def generate(root: Path, count: int, size: int) -> Path:
    """``count`` images of ``size`` in ``root/<class>/`` (PNG at <= 64, else JPEG)."""
    from PIL import Image

    done = root / ".complete"
    if done.is_file():
        return root
    rng = np.random.default_rng(count * 1000 + size)
    fmt, ext = ("PNG", "png") if size <= 64 else ("JPEG", "jpg")
    for c in range(CLASSES):
        (root / f"class{c:02d}").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        c = i % CLASSES
        field = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
        field[..., c % 3] = 40 + 20 * c  # a class-dependent channel level
        im = Image.fromarray(field).resize((size, size), Image.BILINEAR)
        im.save(root / f"class{c:02d}" / f"{i:07d}.{ext}", format=fmt, quality=90)
    done.write_text("ok\n")
    return root


def measure(spec: str, batch: int) -> dict:
    """One measurement in this process: load, then read one epoch of training batches."""
    import torch

    from archbench.data import load_dataset, make_loader

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    data = load_dataset(spec, seed=0)
    load_s = time.perf_counter() - t0
    loader = make_loader(data.train, batch, seed=0)
    t1 = time.perf_counter()
    n = 0
    checksum = 0
    for x, y in loader.batches(0):
        n += len(y)
        checksum += int(x[:, :, 0, 0].sum())  # touch the data
    epoch_s = time.perf_counter() - t1
    self_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {
        "n_train": len(data.train),
        "load_s": round(load_s, 3),
        "epoch_s": round(epoch_s, 3),
        "epoch_images_per_s": round(n / max(epoch_s, 1e-9), 1),
        "peak_rss_mb": round(self_mb, 1),
        "worker_peak_rss_mb": round(child_mb, 1),
        "skipped_files": data.describe()["skipped_files"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--counts", nargs="+", type=int, default=[1000, 10000, 100000])
    ap.add_argument("--sizes", nargs="+", type=int, default=[32, 224])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--work", default="/tmp/archbench_stream_bench", help="image cache folder")
    ap.add_argument("--with-224-100k", action="store_true")
    ap.add_argument(
        "--stream-only-above",
        type=int,
        default=None,
        metavar="N",
        help="for counts above N measure only the streamed loader",
    )
    ap.add_argument("--append", action="store_true", help="merge rows into an existing --out")
    ap.add_argument(
        "--modes", nargs="+", choices=["in_memory", "stream"], default=["in_memory", "stream"]
    )
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "stream_memory.json"))
    ap.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one measurement
    args = ap.parse_args(argv)
    if args.stream_only_above is not None and args.stream_only_above < 0:
        ap.error(f"--stream-only-above must be >= 0, got {args.stream_only_above}")
    if args.measure:
        print(json.dumps(measure(args.measure, args.batch)))
        return 0

    from archbench.bench import environment

    rows = []
    for size in args.sizes:
        for count in args.counts:
            stream_only = args.stream_only_above is not None and count > args.stream_only_above
            if size > 64 and count >= 100000 and not (args.with_224_100k or stream_only):
                rows.append({"size": size, "count": count, "skipped": "needs ~15 GB in memory"})
                print(f"{size}px x {count}: skipped (in-memory copy would need ~15 GB)")
                continue
            t0 = time.perf_counter()
            root = generate(Path(args.work) / f"s{size}_n{count}", count, size)
            gen_s = time.perf_counter() - t0
            base = f"folder:{root},img_size={size},val_frac=0.1,test_frac=0.1"
            for mode, spec in (
                ("in_memory", base),
                ("stream", f"{base},stream=1,workers={args.workers}"),
            ):
                if mode not in args.modes:
                    continue
                if mode == "in_memory" and stream_only:
                    rows.append(
                        {"size": size, "count": count, "mode": mode, "skipped": "stream only"}
                    )
                    continue
                load_before = round(os.getloadavg()[0], 2)
                cmd = [sys.executable, __file__, "--measure", spec, "--batch", str(args.batch)]
                done = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    raise RuntimeError(f"{mode} {size}px x {count} failed:\n{done.stderr[-2000:]}")
                row = {"size": size, "count": count, "mode": mode, **json.loads(done.stdout)}
                row["generate_s"] = round(gen_s, 1)
                row["loadavg_before"] = load_before
                row["loadavg_after"] = round(os.getloadavg()[0], 2)
                rows.append(row)
                print(
                    f"{size:>4}px {count:>7} {mode:<9} load {row['load_s']:>8.2f}s  "
                    f"epoch {row['epoch_images_per_s']:>10.0f} img/s  "
                    f"peak RSS {row['peak_rss_mb']:>8.1f} MB  workers {row['worker_peak_rss_mb']:>7.1f} MB",
                    flush=True,
                )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.append and out.is_file():
        new_keys = {(r["size"], r["count"], r.get("mode")) for r in rows}
        old_rows = json.loads(out.read_text()).get("rows", [])
        kept = [r for r in old_rows if (r["size"], r["count"], r.get("mode")) not in new_keys]
        rows = kept + rows
    record = {
        "benchmark": "stream_memory",
        "conditions": {
            "workers": args.workers,
            "batch": args.batch,
            "torch_threads_main": 1,
            "classes": CLASSES,
            "note": "each measurement in a fresh process; machine shared with other jobs",
        },
        "environment": environment(),
        "rows": rows,
    }
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
