"""Accuracy, parameters, MACs, latency and throughput before and after each seed-paper
pruning method (OPTIN, EViT, SiT, TAS, PreCropping, DRESS, RD pruning, AP, N2N) on CPU
variants trained briefly on the embedded ``shapes`` set.

    python benchmarks/compress_seed_methods.py [--epochs 3] [--threads 1] [--models M,..]

Writes ``benchmarks/results/compress_seed_methods.json``: one record per method with the
before and after figures of ``archbench.compress.measure`` and their ratios. Unstructured
methods (DRESS, RD, AP) zero weights without changing shapes: their MACs and latency do
not fall, which the table shows.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import torch

from archbench import create_model
from archbench.compress import CompressContext, create_compressor
from archbench.compress.measure import measure_compressed, speedups
from archbench.data import load_dataset
from archbench.train import fit, load_recipe

METHODS = {
    "resnet_pico": [
        ("precrop", {"density": 0.3}, "init"),
        ("tas", {"flop_ratio": 0.5, "search_epochs": 2, "kd_epochs": 2}, "trained"),
        ("rd_prune", {"sparsity": 0.7, "grid_steps": 10, "calibration_images": 64}, "trained"),
        ("dress", {"sparsities": "0.5,0.75,0.9", "epochs": 2}, "trained"),
        ("ap", {"cycles": 2, "prune_percent": 40.0}, "trained"),
        ("n2n", {"remove_episodes": 3, "shrink_episodes": 3}, "trained"),
    ],
    "vit_pico": [
        ("optin", {"mac_constraint": 0.6, "calibration_images": 32, "neuron_group": 16}, "trained"),
        ("evit", {"keep_rate": 0.5}, "trained"),
        ("sit", {"keep_rate": 0.5, "finetune_epochs": 2}, "trained"),
    ],
}


def _context(data, recipe, out_dir: Path) -> CompressContext:
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)

    def calibration():
        for i in range(0, data.train.images.shape[0], 64):
            yield (data.train.images[i : i + 64].float() / 255 - mean) / std

    def batches():
        for i, x in enumerate(calibration()):
            yield x, data.train.labels[i * 64 : i * 64 + x.shape[0]]

    return CompressContext(
        data=data,
        calibration=calibration,
        batches=batches,
        recipe=recipe,
        input_shape=tuple(data.train.images.shape[1:]),
        out_dir=out_dir,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data", default="shapes:n_train=1024,n_val=256,n_test=256")
    p.add_argument("--out", default="benchmarks/results/compress_seed_methods.json")
    p.add_argument("--models", default=",".join(METHODS), help="comma-separated subset")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset(args.data, seed=0)
    recipe = load_recipe("cpu-fast").replace(epochs=args.epochs, batch_size=64)
    size = tuple(data.train.images.shape[2:])
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            methods = METHODS[name]
            torch.manual_seed(0)
            base = create_model(name, num_classes=data.num_classes, img_size=size[0])
            init_state = copy.deepcopy(base.state_dict())
            fit(base, data, recipe, Path(tmp) / name, progress=False)
            before = measure_compressed(base, data, size, latency_repeats=30)
            for method, margs, start in methods:
                model = copy.deepcopy(base)
                if start == "init":
                    model.load_state_dict(init_state)
                t0 = time.perf_counter()
                res = create_compressor(method, margs)(
                    model, _context(data, recipe, Path(tmp) / f"{name}_{method}")
                )
                seconds = time.perf_counter() - t0
                if start == "init":  # PreCropping: train the cropped network from scratch
                    fit(
                        res.model,
                        data,
                        recipe,
                        Path(tmp) / f"{name}_{method}_train",
                        progress=False,
                    )
                after = measure_compressed(res.model, data, size, latency_repeats=30)
                rec = {
                    "model": name,
                    "method": method,
                    "args": margs,
                    "compress_seconds": seconds,
                    "before": {
                        k: before[k] for k in ("top1", "params", "macs", "latency_ms", "throughput")
                    },
                    "after": {
                        k: after[k] for k in ("top1", "params", "macs", "latency_ms", "throughput")
                    },
                    "ratios": speedups(before, after),
                    "info": {
                        k: v
                        for k, v in res.info.items()
                        if k
                        in (
                            "sparsity",
                            "heads_kept",
                            "neurons_kept",
                            "widths",
                            "token_counts",
                            "params_ratio",
                            "keep",
                            "inner_ratios",
                            "val_top1_by_level",
                        )
                    },
                    "environment": after["environment"],
                }
                records.append(rec)
                print(
                    json.dumps({k: rec[k] for k in ("model", "method", "before", "after")}),
                    flush=True,
                )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {"epochs": args.epochs, "data": args.data, "records": records}, indent=1, default=str
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
