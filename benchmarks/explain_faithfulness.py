"""Deletion / insertion faithfulness of every CAM method on small trained models.

Trains each model briefly on the procedural ``shapes`` set (``--data``; train split, AdamW,
fixed seed), then scores every method with ``archbench.explain.faithfulness_table`` on the
first ``--images`` test images (targets: the true classes), with a random map as the
reference. Writes benchmarks/results/explain_faithfulness.json (with the environment) and
prints a Markdown table. ``--load DIR`` reuses weights saved by an earlier run
(``--save DIR``), so that two versions of the code can be scored on the same weights.

    python benchmarks/explain_faithfulness.py [--models resnet_pico vit_pico] [--epochs 6]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from archbench.bench import environment
from archbench.data import load_dataset
from archbench.explain import METHODS, faithfulness_table
from archbench.models import create_model


def _normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    x = images.float() / 255.0
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return (x - m) / s


def _train(model, data, epochs: int, batch: int, lr: float) -> float:
    x = _normalize(data.train.images, data.mean, data.std)
    y = data.train.labels
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps = epochs * (len(x) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(len(x) // batch):
            idx = perm[i * batch : (i + 1) * batch]
            xb = x[idx]
            if torch.rand((), generator=g) < 0.5:
                xb = xb.flip(-1)
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    xt = _normalize(data.test.images, data.mean, data.std)
    with torch.no_grad():
        acc = (model(xt).argmax(1) == data.test.labels).float().mean().item()
    return 100.0 * acc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet_pico", "vit_pico"])
    parser.add_argument("--data", default="shapes", help="dataset spec (default shapes)")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--save", type=Path)
    parser.add_argument("--load", type=Path)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset(args.data, seed=0)
    xt = _normalize(data.test.images[: args.images], data.mean, data.std)
    yt = data.test.labels[: args.images]
    results = {"environment": environment(), "data": args.data, "epochs": args.epochs, "models": {}}
    for name in args.models:
        torch.manual_seed(0)
        model = create_model(name, num_classes=data.num_classes)
        t0 = time.perf_counter()
        if args.load:
            model.load_state_dict(load_file(str(args.load / f"{name}.safetensors")))
            model.eval()
            with torch.no_grad():
                acc = 100.0 * (model(xt).argmax(1) == yt).float().mean().item()
        else:
            acc = _train(model, data, args.epochs, batch=128, lr=2e-3)
        if args.save:
            args.save.mkdir(parents=True, exist_ok=True)
            save_file(model.state_dict(), str(args.save / f"{name}.safetensors"))
        rows = faithfulness_table(model, xt, list(METHODS), targets=yt, steps=args.steps)
        results["models"][name] = {
            "test_top1": acc,
            "seconds": time.perf_counter() - t0,
            "rows": rows,
        }
        print(f"\n{name} (test top-1 {acc:.1f}%, {args.images} test images, true-class targets)")
        print("| method | deletion AUC (lower) | insertion AUC (higher) | insertion - deletion |")
        print("| --- | --- | --- | --- |")
        for r in rows:
            print(
                f"| {r['method']} | {r['deletion_auc']:.3f} | {r['insertion_auc']:.3f} "
                f"| {r['insertion_minus_deletion']:.3f} |"
            )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "explain_faithfulness.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
