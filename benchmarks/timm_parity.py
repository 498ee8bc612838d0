"""timm checkpoints in archbench: do the loaded models give timm's logits?

For each case a timm model is built in the peers venv (``/work/shared/peers``:
``bash setup.sh`` makes ``/tmp/peers-venv`` with timm; the shim on ``PYTHONPATH`` lets
timm import without torchvision) with random weights: timm's initialization, then every
1-D tensor (norm scales and shifts, running statistics, layer scales) redrawn so that no
block is an identity. Its state dict is saved as safetensors with timm's names, together
with a batch of inputs and timm's eval-mode logits. archbench then builds the model with
``create_model(name, pretrained=FILE)`` (the timm name mapping, strict) and compares its
logits with timm's.

    .venv/bin/python benchmarks/timm_parity.py [--peers-python /tmp/peers-venv/bin/python]

Writes ``benchmarks/results/timm_parity.json``. Skips cleanly (exit 0, a note) when the
peers venv is absent: it is a measurement, never a test dependency.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEERS = Path("/work/shared/peers")

# (timm name, archbench name, image side)
CASES = [
    ("resnet18", "resnet18", 224),
    ("resnet50", "resnet50", 224),
    ("seresnet50", "seresnet50", 224),
    ("resnext50_32x4d", "resnext50_32x4d", 224),
    ("convnext_tiny", "convnext_tiny", 224),
    ("vit_tiny_patch16_224", "vit_tiny_patch16_224", 224),
    ("vit_small_patch16_224", "vit_small_patch16_224", 224),
    ("deit_tiny_distilled_patch16_224", "deit_tiny_distilled_patch16_224", 224),
    ("mixer_s16_224", "mixer_s16_224", 224),
    ("mambaout_femto", "mambaout_femto", 224),
]

TIMM_SIDE = r"""
import sys, torch, timm
from safetensors.torch import save_file
name, side, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
torch.manual_seed(0)
m = timm.create_model(name, num_classes=1000, pretrained=False).eval()
g = torch.Generator().manual_seed(1)
sd = m.state_dict()
for k, v in sd.items():
    if not v.is_floating_point() or v.ndim != 1:
        continue
    if k.endswith(("running_var", "weight", "gamma")):
        v.copy_(torch.rand(v.shape, generator=g) * 0.5 + 0.5)
    else:
        v.copy_(torch.randn(v.shape, generator=g) * 0.1)
m.load_state_dict(sd)
x = torch.randn(2, 3, side, side, generator=g)
with torch.no_grad():
    y = m(x)
save_file({k: v.contiguous() for k, v in m.state_dict().items()}, out + "/weights.safetensors")
save_file({"x": x, "y": y}, out + "/io.safetensors")
"""


def run_case(peers_python: str, timm_name: str, ours: str, side: int) -> dict:
    import torch
    from safetensors.torch import load_file

    from archbench.models import create_model

    with tempfile.TemporaryDirectory(prefix="timm_parity_") as tmp:
        env = dict(os.environ, PYTHONPATH=str(PEERS / "shim"))
        proc = subprocess.run(
            [peers_python, "-c", TIMM_SIDE, timm_name, str(side), tmp],
            env=env,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            return {"timm": timm_name, "archbench": ours, "error": proc.stderr.strip()[-800:]}
        io = load_file(f"{tmp}/io.safetensors")
        try:
            model = create_model(ours, pretrained=f"{tmp}/weights.safetensors").eval()
        except (ValueError, TypeError) as err:
            return {"timm": timm_name, "archbench": ours, "error": str(err)[:800]}
        with torch.no_grad():
            y = model(io["x"])
    diff = (y - io["y"]).abs().max().item()
    scale = io["y"].abs().max().item()
    return {
        "timm": timm_name,
        "archbench": ours,
        "img_size": side,
        "format": model.pretrained_info["format"],
        "tensors": model.pretrained_info["loaded"],
        "max_abs_diff": diff,
        "max_abs_logit": scale,
        "rel_diff": diff / max(scale, 1e-12),
        "argmax_equal": bool((y.argmax(1) == io["y"].argmax(1)).all()),
        "match": diff <= 1e-4 * max(scale, 1.0),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--peers-python", default="/tmp/peers-venv/bin/python")
    ap.add_argument("--only", nargs="*", help="timm names to run (default: all cases)")
    ap.add_argument("--out", default=str(HERE / "results" / "timm_parity.json"))
    args = ap.parse_args()
    if not Path(args.peers_python).is_file():
        print(
            f"skipped: no peers venv at {args.peers_python} "
            f"(run `bash {PEERS}/setup.sh` to make one)"
        )
        return 0
    import torch

    torch.set_num_threads(2)
    rows = []
    for timm_name, ours, side in CASES:
        if args.only and timm_name not in args.only:
            continue
        row = run_case(args.peers_python, timm_name, ours, side)
        rows.append(row)
        print(json.dumps(row))
    env = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"environment": env, "cases": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if all(r.get("match") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
