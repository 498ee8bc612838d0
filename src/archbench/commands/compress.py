"""`archbench compress RUN --method M [--arg K=V ...] --out DIR`: compress a trained model.

The model of a run folder (``archbench train`` or one run of a comparison) is measured,
compressed by a registered method (``archbench.compress.list_compressors()``), fine-tuned
through ``fit`` when the method calls for it and ``--finetune-epochs`` is given, and
measured again the same way: accuracy, parameters, MACs, file size, latency and
throughput, before and after, written to ``DIR/compress.json``. Every input is checked
before any work starts. A pruned model is saved as a run folder (``model.json`` records
the pruned structure, so ``archbench.runs.load_trained(DIR)`` rebuilds it).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

from ._common import non_negative_int, pct, positive_float, positive_int, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compress",
        help="prune or quantize a trained model; measure it before and after",
        description="Compress the model of a trained run with a registered method and "
        "report accuracy, params, MACs, file size, latency and throughput before and after.",
    )
    p.add_argument("run", help="run folder from `archbench train` (or a checkpoint in one)")
    p.add_argument("--method", required=True, help="compression method, e.g. structured")
    p.add_argument(
        "--arg",
        action="extend",
        nargs="+",
        metavar="KEY=VALUE",
        default=None,
        help="a method argument, e.g. ratio=0.3",
    )
    p.add_argument("--data", help="dataset spec (default: the one the run was trained on)")
    p.add_argument("--split", default="test", choices=["test", "val"], help="accuracy split")
    p.add_argument("--which", default="best", choices=["best", "last"])
    p.add_argument(
        "--finetune-epochs",
        type=non_negative_int,
        default=0,
        help="fine-tune the compressed model with the run's recipe for N epochs",
    )
    p.add_argument("--recipe", help="recipe for fine-tuning (default: the run's)")
    p.add_argument("--batch", type=positive_int, default=64, help="throughput batch size")
    p.add_argument("--repeats", type=positive_int, default=20, help="latency repeats")
    p.add_argument(
        "--throughput-seconds",
        type=positive_float,
        default=1.0,
        help="how long each throughput measurement runs",
    )
    p.add_argument("--threads", type=positive_int, help="torch threads for every timing")
    p.add_argument("--json", action="store_true", help="print the record as JSON")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run)


def compress_run(
    run_dir: str | Path,
    method: str,
    args: dict[str, Any] | None,
    out: str | Path,
    *,
    data_spec: str | None = None,
    split: str = "test",
    which: str = "best",
    finetune_epochs: int = 0,
    recipe: Any = None,
    batch: int = 64,
    repeats: int = 20,
    throughput_seconds: float = 1.0,
    log: Any = None,
    per_sample: bool = False,
    finetune_only_if_needed: bool = False,
) -> dict[str, Any]:
    """Compress the model of ``run_dir`` with ``method`` and measure it before and after;
    the record is also written to ``out/compress.json``. ``recipe``: a name, a file or a
    ``Recipe`` for fine-tuning (default: the run's). ``per_sample``: the after record also
    holds the per-image top-1 hits (``correct``). ``finetune_only_if_needed``: fine-tune
    only a result that asks for it (``needs_finetune``), as a comparison does."""
    import torch

    from archbench.compress import CompressContext, check_compressor, create_compressor
    from archbench.compress.measure import measure_compressed, speedups
    from archbench.data import load_dataset
    from archbench.runs import MODEL_JSON, load_trained, locate_checkpoint
    from archbench.train import check_model_data, fit, load_checkpoint, load_recipe
    from archbench.train.checkpoint import atomic_write_text, save_checkpoint

    log = log or (lambda line: None)
    args = dict(args or {})
    check_compressor(method, args)  # unknown method, argument or value: before any work
    ck, run = locate_checkpoint(run_dir, which)
    info = json.loads((run / MODEL_JSON).read_text())
    spec = data_spec or info.get("data")
    if not spec:
        raise ValueError(f"{str(run)!r} records no dataset; pass --data SPEC")
    data = load_dataset(spec, seed=info.get("data_seed", 0))
    model, info = load_trained(ck, which)
    check_model_data(model, data)
    # the input the model was built for (its run's img_size), which calibration must match
    side = info["kwargs"].get("img_size") or int(data.train.images.shape[-1])
    img_size = (side, side) if isinstance(side, int) else (int(side[0]), int(side[1]))
    shape = (int(getattr(model, "in_chans", data.train.images.shape[1])), *img_size)
    if recipe is None:
        recipe_file = run / "recipe.yaml"
        recipe = load_recipe(str(recipe_file) if recipe_file.is_file() else "cpu-fast")
    else:
        recipe = load_recipe(recipe)

    def images(labelled: bool):
        def factory():
            g = torch.Generator().manual_seed(0)
            order = torch.randperm(len(data.train), generator=g)
            mean = torch.tensor(data.mean).view(1, -1, 1, 1)
            std = torch.tensor(data.std).view(1, -1, 1, 1)
            for i in range(0, len(order), 32):
                idx = order[i : i + 32]
                x = (data.train.images[idx].float() / 255.0 - mean) / std
                yield (x, data.train.labels[idx]) if labelled else x

        return factory

    out = Path(out)
    ctx = CompressContext(
        data=data,
        calibration=images(False),
        batches=images(True),
        recipe=recipe,
        input_shape=shape,
        device=torch.device("cpu"),
        out_dir=out,
        log=log,
    )
    ctx.check_calibration()
    compress = create_compressor(method, args)
    from archbench.compress.structured import snapshot

    original = snapshot(model)
    # compress first (a copy): a layer the method cannot handle fails before anything is
    # measured or written (a method that writes creates ``ctx.out_dir`` itself)
    # methods that work in place (token pruning, masks) change the copy, never ``model``,
    # which is measured as the original below
    result = compress(copy.deepcopy(model), ctx)  # no output before: a refusal stays one line
    log(f"compressed {info['model']} with {method} {args or ''}")
    compressed = result.model
    out.mkdir(parents=True, exist_ok=True)
    measure = dict(split=split, batch=batch, latency_repeats=repeats)
    measure["throughput_seconds"] = throughput_seconds
    log("measuring the original model")
    before = measure_compressed(model, data, img_size, **measure)
    finetuned = None
    wanted = result.needs_finetune or not finetune_only_if_needed
    if (
        finetune_epochs
        and wanted
        and not result.simulated
        and hasattr(compressed, "forward_features")
    ):
        log(f"fine-tuning for {finetune_epochs} epoch(s)")
        masked = _mask_zeros(compressed) if result.keep_zeros else []
        fr = fit(
            compressed.train(),
            data,
            recipe.replace(epochs=finetune_epochs),
            out / "finetune",
            resume=False,
        )
        if fr.best_checkpoint:  # the epoch with the best validation top-1, as fit chose it
            load_checkpoint(fr.best_checkpoint, compressed)
        _unmask(masked)  # after loading: the checkpoint holds the masked layers' tensors
        finetuned = {
            "epochs": finetune_epochs,
            "status": fr.status,
            "best_val_top1": fr.best_val_top1,
            "best_epoch": fr.best_epoch,
        }
        compressed.eval()
    log("measuring after compression")
    macs_of = model if result.simulated or not hasattr(compressed, "forward_features") else None
    after = measure_compressed(
        compressed, data, img_size, macs_of=macs_of, per_sample=per_sample, **measure
    )
    structure = result.info.get("structure")
    saved, reload_error = None, None
    if hasattr(compressed, "forward_features") and not result.simulated:
        from archbench.compress import has_replay
        from archbench.compress.structured import structure_of

        if structure is None and not has_replay(method):  # widths or layers changed
            found = structure_of(compressed, original, model)
            if found["shapes"] or found.get("identity") or found["attrs"]:
                structure = found
        new_info = {**info, "data": spec, "compressed_from": str(ck), "method": method}
        if structure is not None:
            new_info["structure"] = _merge_structure(info.get("structure"), structure)
        if has_replay(method):  # replayed in order on reload, after the structure
            replay_info = {k: v for k, v in result.info.items() if k != "structure"}
            new_info["replay"] = [*info.get("replay", []), {"method": method, "info": replay_info}]
        saved = str(save_checkpoint(out / "checkpoints" / "best.safetensors", compressed))
        atomic_write_text(out / MODEL_JSON, json.dumps(new_info, default=str, indent=2) + "\n")
        reload_error = _check_reload(out, compressed, shape)
    record = {
        "run": str(run),
        "checkpoint": str(ck),
        "model": info["model"],
        "data": spec,
        "method": method,
        "args": args,
        "simulated": result.simulated,
        "int8": bool(result.info.get("runs", "").startswith("int8")),
        "needs_finetune": result.needs_finetune,
        "finetune": finetuned,
        "info": {k: v for k, v in result.info.items() if k != "structure"},
        "before": before,
        "after": after,
        "speedup": speedups(before, after),
        "saved": saved,
        "reloads": saved is not None and reload_error is None,
        "reload_error": reload_error,
    }
    atomic_write_text(out / "compress.json", json.dumps(record, indent=2, default=str) + "\n")
    return record


def _mask_zeros(model: Any) -> list[Any]:
    """Hold every zero weight of the conv and linear layers at zero while fine-tuning
    (``torch.nn.utils.prune``'s mask re-applied before every forward); returns the layers."""
    import torch
    import torch.nn.utils.prune as prune

    layers = []
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and (m.weight == 0).any():
            prune.custom_from_mask(m, "weight", m.weight.detach() != 0)
            layers.append(m)
    return layers


def _unmask(layers: list[Any]) -> None:
    """Make the masks permanent: plain ``weight`` tensors again, the zeros kept."""
    import torch.nn.utils.prune as prune

    for m in layers:
        prune.remove(m, "weight")


def _check_reload(out: Path, compressed: Any, shape: tuple[int, ...]) -> str | None:
    """Rebuild the saved model from ``out`` as ``load_trained`` does and compare its
    outputs with the compressed model's; the reason when they differ, else None."""
    import torch

    from archbench.runs import load_trained

    try:
        reloaded, _ = load_trained(out)
        g = torch.Generator().manual_seed(0)
        x = torch.randn((2, *shape), generator=g)
        with torch.no_grad():
            a, b = compressed.eval()(x), reloaded(x)
        if not torch.allclose(a, b, rtol=1e-4, atol=1e-5):
            return f"the reloaded model's outputs differ by {(a - b).abs().max().item():.3g}"
    except Exception as err:  # reported in the record, never hidden
        return f"{type(err).__name__}: {err}"
    return None


def _merge_structure(old: dict | None, new: dict) -> dict:
    """A model pruned twice: the second structure applies on top of the first."""
    if not old:
        return new
    attrs = {k: dict(v) for k, v in old["attrs"].items()}
    for k, v in new["attrs"].items():
        attrs.setdefault(k, {}).update(v)
    merged = {"attrs": attrs, "shapes": {**old["shapes"], **new["shapes"]}}
    removed = [*old.get("identity", []), *new.get("identity", [])]
    if removed:
        merged["identity"] = removed
    if "feature_chs" in new or "feature_chs" in old:
        merged["feature_chs"] = new.get("feature_chs", old.get("feature_chs"))
    return merged


def run(args: argparse.Namespace) -> int:
    from ._common import parse_kv

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    method_args = parse_kv(args.arg, "--arg")
    record = compress_run(
        args.run,
        args.method,
        method_args,
        args.out,
        data_spec=args.data,
        split=args.split,
        which=args.which,
        finetune_epochs=args.finetune_epochs,
        recipe=args.recipe,
        batch=args.batch,
        repeats=args.repeats,
        throughput_seconds=args.throughput_seconds,
        log=lambda line: print(line, file=sys.stderr),
    )
    if args.json:
        print_json(record)
        return 0
    b, a, s = record["before"], record["after"], record["speedup"]
    kind = (
        "simulated (fake-quantized)"
        if record["simulated"]
        else ("int8 kernels" if record["int8"] else "fp32")
    )
    print(f"{record['model']} compressed with {record['method']} ({kind})")
    print(f"  top-1    {pct(b.get('top1'))} -> {pct(a.get('top1'))} [{b.get('split')}]")
    print(f"  params   {b['params']:,} -> {a['params']:,}")
    print(f"  MACs     {b['macs']:,.0f} -> {a['macs']:,.0f}")
    print(f"  file     {b['file_bytes']:,} B -> {a['file_bytes']:,} B")
    print(
        f"  latency  {b['latency_ms']:.2f} ms -> {a['latency_ms']:.2f} ms "
        f"(x{s.get('latency_speedup', float('nan')):.2f} measured, "
        f"x{s.get('macs_speedup', float('nan')):.2f} by MACs)"
    )
    print(
        f"  thrpt    {b['throughput']:.1f} -> {a['throughput']:.1f} img/s "
        f"(x{s.get('throughput_speedup', float('nan')):.2f})"
    )
    print(f"record: {Path(args.out) / 'compress.json'}")
    return 0
