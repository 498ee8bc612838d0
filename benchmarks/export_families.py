"""Which model families export to ONNX and to torch.export.

Tries every registered CPU-scale variant (or those matching ``--pattern``) with both
exporters through :func:`archbench.export.export_model` (outputs checked against PyTorch,
batch 2 and 3, 32x32 inputs unless the model needs another size) and writes one record per
model and exporter to ``benchmarks/results/export_families.json``, rewritten after every
model so that an interrupted sweep keeps what it measured. Slow: run it with ``nice``.

    python benchmarks/export_families.py [--pattern 'resnet*'] [--img-size 32]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from archbench.export import EXPORT_FORMATS, export_model
from archbench.models import create_model, get_model_card, list_models

OUT = Path(__file__).parent / "results" / "export_families.json"


def _try(name: str, img_size: int, fmt: str, folder: Path) -> dict:
    try:
        model = create_model(name, num_classes=10, img_size=img_size)
        x = torch.randn(2, model.in_chans, img_size, img_size, generator=torch.Generator())
        summary = export_model(model, x, fmt, folder / f"{name}.{fmt}")
        return {"ok": True, "max_abs_error": summary["max_abs_error"], "bytes": summary["bytes"]}
    except Exception as err:  # every failure is a finding: record its reason
        reason = " ".join(str(err).split())[:300]
        return {"ok": False, "reason": f"{type(err).__name__}: {reason}"}
    finally:
        (folder / f"{name}.{fmt}").unlink(missing_ok=True)


def family_table(records: list[dict]) -> str:
    """A markdown table: per family, which variants export to each format, and why not."""
    rows: dict[str, dict[str, list[dict]]] = {}
    for rec in records:
        rows.setdefault(rec["family"], {}).setdefault(rec["format"], []).append(rec)
    lines = [
        "| family | ONNX | torch.export | reason (first failure) |",
        "| --- | --- | --- | --- |",
    ]
    for family in sorted(rows):
        cells, reason = [], ""
        for fmt in EXPORT_FORMATS:
            recs = rows[family].get(fmt, [])
            ok = sum(r["ok"] for r in recs)
            cells.append("yes" if recs and ok == len(recs) else f"{ok}/{len(recs)}")
            bad = [r for r in recs if not r["ok"]]
            if bad and not reason:
                reason = f"{fmt}: {bad[0]['reason'][:140]}".replace("|", "/")
        lines.append(f"| {family} | {cells[0]} | {cells[1]} | {reason} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pattern", default=None, help="glob over model names")
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--table", action="store_true", help="print the table of --out; no run")
    parser.add_argument(
        "--resume", action="store_true", help="keep the records in --out and try only the rest"
    )
    args = parser.parse_args()
    if args.table:
        print(family_table(json.loads(args.out.read_text())["records"]))
        return
    torch.set_num_threads(1)
    names = list_models(args.pattern, scale="cpu")
    # one variant of each family first, so that a sweep cut short still covers the families
    first: list[str] = []
    families: set[str] = set()
    for n in names:
        if get_model_card(n).family not in families:
            families.add(get_model_card(n).family)
            first.append(n)
    names = first + [n for n in names if n not in first]
    records: list[dict] = []
    if args.resume and args.out.is_file():
        records = json.loads(args.out.read_text())["records"]
        tried = {r["model"] for r in records}
        names = [n for n in names if n not in tried]
    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "img_size": args.img_size,
        "batch": [2, 3],
        "atol": 1e-4,
        "rtol": 1e-4,
    }
    try:
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        env["onnxruntime"] = None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(names, 1):
            family = get_model_card(name).family
            for fmt in EXPORT_FORMATS:
                t0 = time.perf_counter()
                rec = {"model": name, "family": family, "format": fmt}
                rec.update(_try(name, args.img_size, fmt, Path(tmp)))
                rec["seconds"] = round(time.perf_counter() - t0, 2)
                records.append(rec)
                status = "ok" if rec["ok"] else "FAIL " + rec["reason"][:100]
                print(f"[{i}/{len(names)}] {name} {fmt}: {status}", flush=True)
            planned = len(names) + len({r["model"] for r in records} - set(names))
            partial = {"environment": env, "models_planned": planned, "records": records}
            args.out.write_text(json.dumps(partial, indent=1) + "\n")
    print(family_table(records))


if __name__ == "__main__":
    main()
