"""The compression axis of ``compare``: every trained model compressed by each method.

A spec with ``compress`` adds, for every trained (model, seed) run, one entry per method:

```yaml
compress:
  methods: [{name: structured, args: {ratio: 0.3}}, ptq_int8]
  finetune_epochs: 1        # fine-tune methods that ask for it (0: never)
  latency_repeats: 20       # timing of the before / after measurement
  throughput_seconds: 0.5
```

Each entry (``MODEL + METHOD``) takes the trained run's best checkpoint through
:func:`archbench.commands.compress.compress_run`: compress, fine-tune through the
comparison's recipe when the method calls for it, and measure before and after in the
same process and the same way (accuracy on the test split with per-image hits, so the
leaderboard's paired statistics apply; parameters, MACs, file size, latency, throughput).
Compression entries run one at a time after all training, like the measurements, so
their timings are not taken beside a training job.

:func:`compress_gains` then sets each entry beside its uncompressed run (paired by seed):
the accuracy change with a 95% interval and Holm's correction, the MACs ratio, and the
*measured* latency and throughput speed-ups of the same runs, flagging the entries whose
MACs fell while their latency did not (``MACs only``) and those whose figures come from
simulated (fake-quantized) arithmetic.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

__all__ = [
    "COMPRESS_KEYS",
    "compress_entries",
    "compress_gains",
    "compress_gains_markdown",
    "run_compress_entry",
]

COMPRESS_KEYS = ("methods", "finetune_epochs", "latency_repeats", "throughput_seconds")
# a method whose MACs fall by more than this factor should run at least _REAL faster
_MACS_DROP, _REAL = 1.10, 1.05


def compress_entries(compress: dict[str, Any]) -> list[dict[str, Any]]:
    """One setting per method, checked (names, arguments, values) before any training."""
    from ..compress import check_compressor

    d = dict(compress or {})
    unknown = sorted(set(d) - set(COMPRESS_KEYS))
    if unknown:
        raise ValueError(f"unknown compress key(s) {unknown}; accepted: {', '.join(COMPRESS_KEYS)}")
    if not d.get("methods") or not isinstance(d["methods"], list):
        raise ValueError(
            "compress needs a methods list (e.g. [{name: structured, args: {ratio: 0.3}}])"
        )
    finetune = d.get("finetune_epochs", 0)
    repeats = d.get("latency_repeats", 20)
    seconds = d.get("throughput_seconds", 0.5)
    if not isinstance(finetune, int) or isinstance(finetune, bool) or finetune < 0:
        raise ValueError(f"compress finetune_epochs must be an integer >= 0, got {finetune!r}")
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise ValueError(f"compress latency_repeats must be an integer >= 1, got {repeats!r}")
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds <= 0:
        raise ValueError(f"compress throughput_seconds must be > 0, got {seconds!r}")
    methods = []
    for m in d["methods"]:
        if isinstance(m, str):
            methods.append((m, {}))
        elif isinstance(m, dict) and isinstance(m.get("name"), str):
            extra = sorted(set(m) - {"name", "args"})
            if extra:
                raise ValueError(
                    f"compress method entry has unknown key(s) {extra}; use name, args"
                )
            methods.append((m["name"], dict(m.get("args") or {})))
        else:
            raise ValueError(f"a compress method is a name or {{name, args}}, got {m!r}")
    names = [name for name, _ in methods]
    entries, seen = [], set()
    for name, args in methods:
        check_compressor(name, args)
        label = name
        if names.count(name) > 1:
            label = f"{name}({', '.join(f'{k}={v}' for k, v in sorted(args.items()))})"
        if label in seen:
            raise ValueError(f"compress method {label!r} is listed twice with the same arguments")
        seen.add(label)
        entries.append(
            {
                "label": label,
                "method": name,
                "args": args,
                "finetune_epochs": finetune,
                "latency_repeats": repeats,
                "throughput_seconds": float(seconds),
            }
        )
    return entries


def run_compress_entry(cfg: dict[str, Any], base: Path, run_dir: Path) -> dict[str, Any]:
    """Compress the model of the trained run in ``base`` as ``cfg["compress"]`` says and
    measure it before and after; the comparison's record of the entry."""
    import json

    from ..commands.compress import compress_run

    c = cfg["compress"]
    result: dict[str, Any] = {"key": cfg["key"], "model": cfg["model"], "seed": cfg["seed"]}
    base_result = base / "run_result.json"
    status = json.loads(base_result.read_text()).get("status") if base_result.exists() else None
    if status != "completed":
        result.update(
            status="error",
            error=f"the uncompressed run did not complete ({status or 'no result'}); "
            "nothing to compress",
        )
        return result
    from ..train import Recipe
    from .compare import load_run_data

    data = load_run_data(cfg["data"], cfg["data_seed"])
    split = "test" if data.test is not None else "val"
    recipe = Recipe.from_dict({**cfg["recipe"], "seed": cfg["seed"]})
    rec = compress_run(
        base,
        c["method"],
        c["args"],
        run_dir,
        split=split,
        finetune_epochs=c["finetune_epochs"],
        finetune_only_if_needed=True,
        recipe=recipe,
        batch=cfg["measure_batch"],
        repeats=c["latency_repeats"],
        throughput_seconds=c["throughput_seconds"],
        per_sample=True,
    )
    after, before = rec["after"], rec["before"]
    result.update(
        status="completed",
        test_top1=after["top1"],
        test_top5=after["top5"],
        test_loss=after["loss"],
        test_n=after["n"],
        test_correct=after["correct"],
        test_split=split if split == "test" else "val (no test split)",
        val_top1=(rec["finetune"] or {}).get("best_val_top1"),
        params=after["params"],
        macs=after["macs"],
        file_bytes=after["file_bytes"],
        latency_ms=after["latency_ms"],
        latency=after["latency"],
        throughput=after["throughput"],
        throughput_detail=after["throughput_detail"],
        before={
            k: before[k]
            for k in ("top1", "params", "macs", "file_bytes", "latency_ms", "throughput")
        },
        speedup=rec["speedup"],
        simulated=rec["simulated"],
        int8=rec["int8"],
        finetune=rec["finetune"],
        compress_info=rec["info"],
        train_time_s=0.0,
    )
    return result


def compress_gains(
    records: list[dict[str, Any]], method: str = "t", test_set_noise: bool = True
) -> list[dict[str, Any]]:
    """Each compression entry beside its uncompressed runs, paired by seed.

    Accuracy: compressed minus uncompressed test top-1, by
    :func:`archbench.bench.leaderboard.paired_gain` (paired t over seeds, plus the test
    set's noise from per-image hits), Holm-corrected across all entries. Speed: the median
    over seeds of each run's before/after ratios, both measured in the same process.
    """
    from .leaderboard import holm_verdicts, paired_gain

    base: dict[tuple[str, int], dict[str, Any]] = {}
    groups: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    for r in records:
        if r.get("status") != "completed" or r.get("test_top1") is None:
            continue
        label = (r.get("config") or {}).get("compress", {}).get("label")
        if label is None:
            if not r.get("method") and not r.get("pretrained"):
                base[r["model"], r["seed"]] = r
        else:
            groups.setdefault((r["model"], label), {})[r["seed"]] = r
    rows = []
    for (model, label), per_seed in sorted(groups.items()):
        seeds = sorted(s for s in per_seed if (model, s) in base)
        if not seeds:
            continue
        runs_a = [per_seed[s] for s in seeds]
        runs_b = [base[model, s] for s in seeds]
        est = paired_gain(runs_a, runs_b, seeds, method=method, test_set_noise=test_set_noise)

        def med(key: str, runs: list[dict[str, Any]] = runs_a) -> float | None:
            vals = [r["speedup"][key] for r in runs if r.get("speedup", {}).get(key)]
            return statistics.median(vals) if vals else None

        first = runs_a[0]
        kind = "simulated" if first.get("simulated") else ("int8" if first.get("int8") else "fp32")
        macs_x, lat_x = med("macs_speedup"), med("latency_speedup")
        macs_only = (
            kind != "simulated"
            and macs_x is not None
            and lat_x is not None
            and macs_x > _MACS_DROP
            and lat_x < _REAL
        )
        rows.append(
            {
                "model": model,
                "method": label,
                "n": len(seeds),
                "change": est.gap,
                "ci_low": est.ci_low,
                "ci_high": est.ci_high,
                "comparison": est,
                "arithmetic": kind,
                "params_ratio": med("params_ratio"),
                "macs_speedup": macs_x,
                "latency_speedup": lat_x,
                "throughput_speedup": med("throughput_speedup"),
                "file_ratio": med("file_bytes_ratio"),
                "macs_only": macs_only,
            }
        )
    holm_verdicts(rows)
    return rows


def _x(v: float | None) -> str:
    return "-" if v is None else f"x{v:.2f}"


def compress_gains_markdown(rows: list[dict[str, Any]]) -> str:
    """The compression table: accuracy change with its interval, counted and measured speed."""
    lines = [
        "| model | method | arithmetic | seeds | top-1 change (pp) | 95% interval (pp) | Holm p "
        "| verdict | params | file | MACs speed-up | latency speed-up | throughput speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        change = "-" if r["change"] is None else f"{100 * r['change']:+.2f}"
        ci = (
            "-" if r["ci_low"] is None else f"[{100 * r['ci_low']:+.2f}, {100 * r['ci_high']:+.2f}]"
        )
        p = r.get("p_adjusted")
        lat = _x(r["latency_speedup"]) + (" (MACs only)" if r["macs_only"] else "")
        lines.append(
            f"| {r['model']} | {r['method']} | {r['arithmetic']} | {r['n']} | {change} | {ci} | "
            f"{'-' if p is None else f'{p:.3g}'} | {r['verdict']} | {_x(r['params_ratio'])} | "
            f"{_x(r['file_ratio'])} | {_x(r['macs_speedup'])} | {lat} | "
            f"{_x(r['throughput_speedup'])} |"
        )
    lines.append(
        "\nTop-1 change: the compressed model minus the same trained run uncompressed, paired "
        "by seed, with a 95% interval and Holm's correction across the rows (the method of "
        "the gain tables). params and file: after / before. Speed-ups: before / after, the "
        "MACs one counted, the latency (batch 1) and throughput ones measured in one process "
        "right after each other; median over seeds. `MACs only`: MACs fell by more than "
        f"{int(round(100 * (_MACS_DROP - 1)))}% while latency improved by less than "
        f"{int(round(100 * (_REAL - 1)))}%. `simulated`: fake quantization in float arithmetic; "
        "its speed says nothing about int8 deployment. `int8`: the graph ran int8 kernels."
    )
    return "\n".join(lines)
