"""Checkpoints as one safetensors file: tensors (weights, optimizer moments, RNG states,
callback state) plus JSON metadata for everything else. Written atomically (temporary
file, fsync, ``os.replace``); loading never unpickles anything.

Keys: ``model/<param>`` (weights), ``optim/<index>/<name>`` (optimizer state tensors),
``extra/<name>`` (RNG states, EMA weights ...). Metadata: ``archbench`` (format tag),
``meta`` (JSON: epoch, history, recipe ...), ``optim`` (JSON: non-tensor optimizer state).
A plain safetensors weights file (no ``model/`` prefix) loads as weights too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

__all__ = [
    "FORMAT",
    "atomic_write_text",
    "load_checkpoint",
    "read_checkpoint_meta",
    "save_checkpoint",
]

FORMAT = "archbench-checkpoint-v1"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)
    _fsync_dir(p.parent)


def _unshare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory: copy the second and later views."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for k, v in tensors.items():
        v = v.detach().cpu()
        key = (v.untyped_storage().data_ptr(), v.untyped_storage().nbytes())
        if (
            key in seen
            or not v.is_contiguous()
            or v.numel() != v.untyped_storage().nbytes() // max(1, v.element_size())
        ):
            v = v.clone().contiguous()
        else:
            seen.add(key)
        out[k] = v
    return out


def _optim_to_flat(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    state_json: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for name, val in st.items():
            if isinstance(val, torch.Tensor):
                tensors[f"optim/{idx}/{name}"] = val
            else:
                state_json.setdefault(str(idx), {})[name] = val
    return tensors, {"state": state_json, "param_groups": sd["param_groups"]}


def _optim_from_flat(tensors: dict[str, torch.Tensor], js: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, val in tensors.items():
        _, idx, name = key.split("/", 2)
        state.setdefault(int(idx), {})[name] = val
    for idx, st in js.get("state", {}).items():
        state.setdefault(int(idx), {}).update(st)
    groups = []
    for g in js["param_groups"]:
        groups.append(
            {k: (tuple(v) if isinstance(v, list) and k != "params" else v) for k, v in g.items()}
        )
    return {"state": state, "param_groups": groups}


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    extra_tensors: dict[str, torch.Tensor] | None = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write weights (+ optimizer state, extra tensors, JSON ``meta``) atomically."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    metadata = {"archbench": FORMAT, "meta": json.dumps(meta or {}, default=str)}
    if optimizer is not None:
        opt_tensors, opt_json = _optim_to_flat(optimizer.state_dict())
        tensors.update(opt_tensors)
        metadata["optim"] = json.dumps(opt_json)
    for k, v in (extra_tensors or {}).items():
        tensors[f"extra/{k}"] = v
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    save_file(_unshare(tensors), str(tmp), metadata=metadata)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, p)
    _fsync_dir(p.parent)
    return p


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a checkpoint, without reading its tensors."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {str(p)!r} does not exist")
    try:
        with safe_open(str(p), framework="pt") as f:
            md = f.metadata() or {}
    except Exception as err:
        raise ValueError(f"{str(p)!r} is not a safetensors checkpoint: {err}") from None
    return json.loads(md.get("meta", "{}"))


def load_checkpoint(
    path: str | Path,
    model: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    strict: bool = True,
) -> dict[str, Any]:
    """Load weights into ``model`` and state into ``optimizer``; return ``meta``,
    ``extra`` (tensors) and ``state_dict`` (the weights)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {str(p)!r} does not exist")
    try:
        with safe_open(str(p), framework="pt") as f:
            md = f.metadata() or {}
        tensors = load_file(str(p))
    except Exception as err:
        raise ValueError(f"{str(p)!r} is not a readable safetensors checkpoint: {err}") from None
    if any(k.startswith("model/") for k in tensors):
        weights = {k[6:]: v for k, v in tensors.items() if k.startswith("model/")}
    else:  # a plain weights file
        weights = dict(tensors)
    if model is not None:
        missing, unexpected = model.load_state_dict(weights, strict=False)
        if strict and (missing or unexpected):
            raise ValueError(
                f"checkpoint {str(p)!r} does not match the model: missing {list(missing)[:5]}, "
                f"unexpected {list(unexpected)[:5]}"
            )
    if optimizer is not None:
        if "optim" not in md:
            raise ValueError(f"checkpoint {str(p)!r} holds no optimizer state")
        opt = {k: v for k, v in tensors.items() if k.startswith("optim/")}
        optimizer.load_state_dict(_optim_from_flat(opt, json.loads(md["optim"])))
    extra = {k[6:]: v for k, v in tensors.items() if k.startswith("extra/")}
    return {"meta": json.loads(md.get("meta", "{}")), "extra": extra, "state_dict": weights}
