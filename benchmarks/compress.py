"""Compression benchmark: measured latency and throughput against MACs, per method.

For each model (resnet50, vit_small_patch16_224 and the CPU variants resnet_pico and
vit_pico by default) and each method (structured pruning at 30% and 50%, PT2E int8,
AdaLog), the model is compressed and measured the same way as the original
(``archbench.compress.measure``). Quantune is left out: it needs labelled validation
data to rank configurations, and its result is simulated, so its speed is float's. Weights are random (speed does not depend on them), so
accuracy is not reported here; the data is random calibration images at the model's size.
Each row says whether its speed is an int8 kernel's, float's, or simulated, and flags a
method whose MACs fall by more than 10% while latency does not.

    python benchmarks/compress.py [--models ...] [--methods ...] [--threads 1]
    python benchmarks/compress.py --survey      # prune every CPU variant, write the table data

Results: ``benchmarks/results/compress.json`` (``--survey``: the pruning survey's JSON,
``tests/compress/data/prune_survey.json``, and its markdown table on stdout).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
METHODS = {
    "structured_30": ("structured", {"ratio": 0.3}),
    "structured_50": ("structured", {"ratio": 0.5}),
    "pt2e_int8": ("pt2e_int8", {"scheme": "int8", "backend": "lower", "calib_batches": 2}),
    "adalog": ("adalog", {"bits": 4, "calib_batches": 1}),
}


def bench(
    models: list[str], methods: list[str], batch: int, repeats: int, out: Path | None = None
) -> list[dict]:
    from archbench.compress import CompressContext, create_compressor
    from archbench.compress.measure import measure_compressed, speedups
    from archbench.models import create_model

    rows = []
    for name in models:
        model = create_model(name).eval()
        card = getattr(model, "model_card", None)
        side = card.img_size if card is not None else 224
        shape = (3, side, side)
        g = torch.Generator().manual_seed(0)
        calib = [torch.randn(8, *shape, generator=g) for _ in range(4)]
        before = measure_compressed(model, None, (side, side), batch=batch, latency_repeats=repeats)
        print(
            f"{name}: {before['macs'] / 1e6:.1f} MMACs, {before['latency_ms']:.2f} ms", flush=True
        )
        for label in methods:
            method, args = METHODS[label]
            if method in ("adalog",) and "vit" not in name:
                continue  # AdaLog is for post-softmax/post-GELU activations (transformers)
            ctx = CompressContext(calibration=lambda c=calib: iter(c), input_shape=shape)
            t = time.perf_counter()
            try:
                result = create_compressor(method, args)(model, ctx)
            except Exception as err:  # noqa: BLE001  (a benchmark records failures)
                rows.append({"model": name, "method": label, "error": str(err)[:300]})
                print(f"  {label}: failed: {err}", flush=True)
                continue
            seconds = time.perf_counter() - t
            macs_of = model if result.simulated or method == "pt2e_int8" else None
            after = measure_compressed(
                result.model,
                None,
                (side, side),
                batch=batch,
                latency_repeats=repeats,
                macs_of=macs_of,
            )
            ratio = speedups(before, after)
            kind = (
                "simulated" if result.simulated else ("int8" if method == "pt2e_int8" else "fp32")
            )
            macs_fall = after["macs"] < 0.9 * before["macs"]
            row = {
                "model": name,
                "method": label,
                "kind": kind,
                "compress_seconds": seconds,
                "before": before,
                "after": after,
                "speedup": ratio,
                "macs_fall_latency_does_not": bool(
                    macs_fall and ratio.get("latency_speedup", 0) < 1.05
                ),
            }
            rows.append(row)
            print(
                f"  {label} [{kind}]: MACs x{ratio.get('macs_speedup', 1):.2f}, latency "
                f"x{ratio['latency_speedup']:.2f}, throughput x{ratio['throughput_speedup']:.2f}",
                flush=True,
            )
        if out is not None:  # after every model, so a long sweep keeps what it measured
            out.write_text(json.dumps({"rows": rows}, indent=1, default=str) + "\n")
    return rows


def survey(limit_s: int) -> dict:
    from archbench.compress.structured import survey_model
    from archbench.models import get_model_card, list_models

    out = {}
    for name in list_models(scale="cpu"):

        def _alarm(*_):
            raise TimeoutError(f"over {limit_s} s")

        signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(limit_s)
        try:
            record = survey_model(name)
        except TimeoutError as err:
            record = {"model": name, "status": "timeout", "error": str(err)}
        finally:
            signal.alarm(0)
        record["family"] = get_model_card(name).family
        out[name] = record
        print(name, record["status"], file=sys.stderr, flush=True)
    return out


def survey_table(records: dict) -> str:
    """The markdown table of docs/compression.md, from the survey's records."""
    lines = [
        "| model | family | outcome | layers ignored | params before -> after |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in sorted(records):
        r = records[name]
        ignored = ", ".join(f"`{x}`" for x in r.get("ignored") or []) or "-"
        params = f"{r['params_before']:,} -> {r['params_after']:,}" if "params_after" in r else "-"
        lines.append(f"| {name} | {r.get('family', '')} | {r['status']} | {ignored} | {params} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--models",
        nargs="+",
        default=["resnet_pico", "vit_pico", "resnet50", "vit_small_patch16_224"],
    )
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int)
    p.add_argument("--survey", action="store_true", help="prune every CPU variant instead")
    p.add_argument("--survey-limit", type=int, default=90, help="seconds per model")
    args = p.parse_args()
    warnings.simplefilter("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.survey:
        records = survey(args.survey_limit)
        path = ROOT / "tests" / "compress" / "data" / "prune_survey.json"
        path.write_text(json.dumps(records, indent=1, sort_keys=True) + "\n")
        print(survey_table(records))
        return
    out = ROOT / "benchmarks" / "results" / "compress.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    bench(args.models, args.methods, args.batch, args.repeats, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
