"""Linear-probe accuracy after a short self-supervised pretraining, against random init.

For each method (OBoW, GEDI, SP²OT, ClusterFit, Noise As Targets, context prediction,
Selfie, SparK, SIE by default) a CPU-scale backbone is pretrained on ``shapes`` with its
labels hidden, then probed with :func:`archbench.ssl.probe.probe` (weight decay chosen on a
part of the training split, test split read once). The same backbone at random
initialization (same seed) is the baseline. Results go to
``benchmarks/results/ssl_pretext_probe.json``.

    python benchmarks/ssl_pretext_probe.py --epochs 3 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from archbench.data import load_dataset
from archbench.models import create_model
from archbench.ssl.probe import probe
from archbench.train import fit, load_recipe

# small settings that fit CPU-scale backbones on 16-32 px images
METHODS: dict[str, dict] = {
    "obow": {"num_words": 256, "patches": 2},
    "gedi": {"sgld_steps": 5, "buffer_size": 512},
    "sp2ot": {"clusters": 10},
    "clusterfit": {"clusters": 16},
    "nat": {"dim": 32, "reassign_every": 1},
    "context_prediction": {"patch": 4, "gap": 1, "jitter": 1, "hidden": 64},
    "selfie": {"depth": 1},
    "spark": {},
    "sie": {"expander_width": 256},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet_pico")
    ap.add_argument("--data", default="shapes:n_train=1024,n_val=128,n_test=512,img_size=16")
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/ssl_pretext_probe.json")
    args = ap.parse_args()
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        ap.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    torch.set_num_threads(args.threads)
    data = load_dataset(args.data)
    records = []
    for seed in args.seeds:

        def fresh(seed: int = seed) -> torch.nn.Module:
            torch.manual_seed(seed)
            return create_model(args.model, num_classes=data.num_classes, img_size=data.img_size)

        base = probe(fresh(), data, kind="both", seed=seed)
        records.append(
            {
                "method": "random_init",
                "seed": seed,
                "linear": base["linear"]["acc"],
                "knn": base["knn"]["acc"],
                "pretrain_s": 0.0,
            }
        )
        print(records[-1], flush=True)
        for name in args.methods:
            model = fresh()
            recipe = load_recipe("cpu-fast").replace(
                epochs=args.epochs,
                batch_size=args.batch_size,
                warmup_epochs=0,
                seed=seed,
                task=name,
                task_args=METHODS[name],
            )
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory() as out:
                res = fit(model, data, recipe, out, progress=False)
            seconds = time.perf_counter() - t0
            p = probe(model, data, kind="both", seed=seed)
            records.append(
                {
                    "method": name,
                    "seed": seed,
                    "status": res.status,
                    "linear": p["linear"]["acc"],
                    "knn": p["knn"]["acc"],
                    "pretrain_s": round(seconds, 1),
                }
            )
            print(records[-1], flush=True)
    env = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "model": args.model,
        "data": args.data,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"env": env, "records": records}, indent=1))


if __name__ == "__main__":
    main()
