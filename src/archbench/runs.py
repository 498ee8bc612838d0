"""Rebuild a trained model from a run folder (``archbench train`` or one run of a comparison)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch.nn as nn

from .models import create_model
from .train import load_checkpoint

__all__ = ["MODEL_JSON", "build_run_model", "load_trained", "locate_checkpoint"]

MODEL_JSON = "model.json"


def locate_checkpoint(path: str | Path, which: str = "best") -> tuple[Path, Path]:
    """(checkpoint file, run folder) for a run folder or a ``.safetensors`` file inside one."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.is_dir():
        ck, run = path / "checkpoints" / f"{which}.safetensors", path
    else:
        ck = path
        run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    if not ck.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(ck)!r}")
    if not (run / MODEL_JSON).is_file():
        raise FileNotFoundError(
            f"no {MODEL_JSON} in {str(run)!r}: the run folder records which model to build"
        )
    return ck, run


def build_run_model(info: dict[str, Any]) -> nn.Module:
    """The (untrained) model a run's model.json describes, with the pruned structure and
    the compression methods' module changes it records, ready for its checkpoint."""
    model = create_model(info["model"], **info["kwargs"])
    if info.get("structure"):  # a pruned model: give it the pruned shapes first
        from .compress.structured import apply_structure

        apply_structure(model, info["structure"])
    if info.get("replay"):  # modules a compression method added (token pruning, masks)
        from .compress import replay_compression

        for step in info["replay"]:
            replay_compression(model, step["method"], step["info"])
    return model


def load_trained(path: str | Path, which: str = "best") -> tuple[nn.Module, dict[str, Any]]:
    """The model of a run with its trained weights, in eval mode, and the run's model.json."""
    ck, run = locate_checkpoint(path, which)
    info = json.loads((run / MODEL_JSON).read_text())
    model = build_run_model(info)
    load_checkpoint(ck, model)
    return model.eval(), info
