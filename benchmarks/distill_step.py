"""Step time of a student trained alone, with its teacher run every step, and with the
teacher's logits read from the cache.

One teacher (trained for one epoch here: its accuracy does not change the cost) and one
student on ``shapes`` 32x32. Each case trains through :func:`archbench.train.fit` for two
epochs; the second epoch's step time (``step_time_s`` of the record: batch, augmentation,
teacher, forward, backward, optimizer step) is reported per step. The cached case runs
after a first run has filled the cache, so both its epochs read it.

Run: ``.venv/bin/python benchmarks/distill_step.py [--teacher resnet_nano]
[--student vit_pico] [--batch 64] [--steps 8] [--threads 2]``. Writes
``benchmarks/results/distill_step.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from archbench.bench import environment
from archbench.cli import main as cli
from archbench.data import load_dataset
from archbench.models import create_model
from archbench.train import fit, load_recipe


def _student_step(student: str, data, recipe, out: Path) -> float:
    torch.manual_seed(0)
    model = create_model(student, num_classes=data.num_classes, img_size=data.img_size)
    res = fit(model, data, recipe, out, progress=False)
    rec = res.history[-1]
    return rec["step_time_s"] / res.steps * len(res.history)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", default="resnet_nano")
    ap.add_argument("--student", default="vit_pico")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=8, help="steps per epoch")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "distill_step.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    n_train = args.batch * args.steps
    spec = f"shapes:img_size=32,n_train={n_train},n_val={args.batch},n_test=16"
    data = load_dataset(spec, seed=0)
    base = load_recipe("cpu-fast").replace(
        epochs=2, batch_size=args.batch, eval_batch_size=args.batch, warmup_epochs=0.0
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        teacher_dir = root / "teacher"
        code = cli(
            [
                "train",
                args.teacher,
                "--data",
                spec,
                "--epochs",
                "1",
                "--batch-size",
                str(args.batch),
                "--threads",
                str(args.threads),
                "--out",
                str(teacher_dir),
            ]
        )
        if code != 0:
            return code
        kd = {"teacher": str(teacher_dir)}
        cache = str(root / "cache")
        cases = {
            "student alone": base,
            "with teacher": base.replace(task="kd", task_args=kd),
            "cache filling": base.replace(task="kd", task_args={**kd, "cache": cache}),
            "with cache": base.replace(task="kd", task_args={**kd, "cache": cache}),
        }
        ms = {}
        for i, (name, recipe) in enumerate(cases.items()):
            ms[name] = 1000 * _student_step(args.student, data, recipe, root / f"s{i}")
    alone = ms["student alone"]
    rows = [{"case": k, "ms_per_step": v, "vs_student_alone": v / alone} for k, v in ms.items()]
    result = {
        "teacher": args.teacher,
        "student": args.student,
        "batch": args.batch,
        "img_size": 32,
        "steps_per_epoch": args.steps,
        "timed": "second of two epochs, step time per step (validation excluded)",
        "rows": rows,
        "environment": environment(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for r in rows:
        print(f"{r['case']:<15} {r['ms_per_step']:8.1f} ms/step  x{r['vs_student_alone']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
