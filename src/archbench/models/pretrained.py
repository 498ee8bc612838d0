"""Pretrained weights into a built model: local safetensors files and the Hugging Face hub.

``create_model(name, pretrained=SOURCE)`` calls ``load_pretrained(model, SOURCE)``:

- ``SOURCE`` is a path to a ``.safetensors`` file, or ``"hf-hub:ORG/NAME"`` for the file
  ``model.safetensors`` of that hub repository, found through ``huggingface_hub``'s
  cache (``HF_HUB_CACHE``). With ``HF_HUB_OFFLINE=1`` only the cache is read; otherwise
  a file missing from the cache is downloaded by ``huggingface_hub``.
- The file may use archbench's names (a weights file or a training checkpoint, whose
  ``model/`` prefix is stripped) or timm's (``archbench.models.timm_names``): the
  loader tries both and keeps the one under which every tensor matches the model.
- Nothing is unpickled: ``.pth``/``.pt``/``.bin``/``.ckpt`` files are refused with the
  way to convert them.
- The classifier of a checkpoint with another number of classes is not loaded: the
  model keeps its own freshly initialized classifier layer and a warning names its
  tensors (the hidden layers of an MLP head, which do not depend on the classes, load). An
  absolute position embedding (``pos_embed``) for another grid is resized to the model's
  (bicubic over the grid, prefix tokens kept; ``layers.pos_embed.resample_pos_embed``,
  as timm does when it loads a ViT at another resolution).
- Loading is all or nothing: the new state dict is assembled on the side and assigned
  with ``load_state_dict(strict=True)`` only when every tensor matched. A checkpoint
  for another architecture raises ``ValueError`` listing the first mismatching names
  and shapes. BatchNorm's ``num_batches_tracked`` counters may be absent from a file
  (some exporters drop them); the model keeps its own.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from ..layers.pos_embed import resample_pos_embed
from .timm_names import from_timm, has_timm_mapping

__all__ = ["HeadResetWarning", "load_pretrained", "read_safetensors", "resolve_pretrained"]

HUB_PREFIX = "hf-hub:"
HUB_FILENAME = "model.safetensors"
PICKLED_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".pkl", ".tar")
_SHOWN = 5  # mismatches listed in an error message


class HeadResetWarning(UserWarning):
    """The checkpoint's classifier did not fit the model and was left out."""


def _convert_hint(path: str) -> str:
    return (
        f"archbench never unpickles files, and {path!r} is a pickled checkpoint. Convert it "
        "once, in an environment where you trust the file: "
        "`sd = torch.load(PATH, map_location='cpu', weights_only=True)` (take sd['state_dict'] "
        "or sd['model'] if the weights are nested), then "
        "`safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, "
        "'model.safetensors')`, and pass the .safetensors file"
    )


def _hub_file(repo_id: str) -> str:
    import huggingface_hub as hf

    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"hub name must be 'hf-hub:ORG/NAME', got 'hf-hub:{repo_id}'")
    cache_dir = os.environ.get("HF_HUB_CACHE") or None
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    cached = hf.try_to_load_from_cache(repo_id, HUB_FILENAME, cache_dir=cache_dir)
    if isinstance(cached, str):
        return cached
    pickled = [
        f
        for f in ("pytorch_model.bin", "open_clip_pytorch_model.bin")
        if isinstance(hf.try_to_load_from_cache(repo_id, f, cache_dir=cache_dir), str)
    ]
    if pickled:
        raise ValueError(
            f"hub repository {repo_id!r} has only {pickled[0]} in the cache, not "
            f"{HUB_FILENAME}; " + _convert_hint(pickled[0])
        )
    where = cache_dir or hf.constants.HF_HUB_CACHE
    if offline:
        raise ValueError(
            f"{HUB_FILENAME} of hub repository {repo_id!r} is not in the hub cache {where} and "
            f"HF_HUB_OFFLINE is set: run `hf download {repo_id} {HUB_FILENAME}` where the "
            "network is reachable (same HF_HUB_CACHE), or unset HF_HUB_OFFLINE"
        )
    try:
        return hf.hf_hub_download(repo_id, HUB_FILENAME, cache_dir=cache_dir)
    except Exception as err:  # network, authentication or missing-file errors of the hub
        raise ValueError(
            f"could not fetch {HUB_FILENAME} of hub repository {repo_id!r} ({err}); check the "
            f"name, or place the file in the hub cache {where}"
        ) from err


def resolve_pretrained(source: str | os.PathLike[str]) -> Path:
    """The local safetensors file that ``source`` (a path or ``hf-hub:ORG/NAME``) names."""
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            f"pretrained must be a path to a .safetensors file or 'hf-hub:ORG/NAME', "
            f"got {type(source).__name__}"
        )
    text = os.fspath(source)
    if text.startswith(HUB_PREFIX):
        return Path(_hub_file(text[len(HUB_PREFIX) :]))
    path = Path(text).expanduser()
    if path.suffix.lower() in PICKLED_SUFFIXES:
        raise ValueError(_convert_hint(text))
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained weights {text!r} not found; pass an existing .safetensors file or "
            "'hf-hub:ORG/NAME'"
        )
    return path


def read_safetensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, with a clear error for anything else."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        with open(path, "rb") as fh:
            magic = fh.read(4)
        if magic[:2] == b"PK" or magic[:1] == b"\x80":
            raise ValueError(_convert_hint(str(path))) from err
        raise ValueError(
            f"{str(path)!r} is not a readable safetensors file ({err}); it may be truncated or "
            "in another format: re-download or re-save it with safetensors.torch.save_file"
        ) from err


def _head_names(model: nn.Module) -> tuple[str, ...]:
    """Name prefixes of the classifier module(s) of ``model`` (``head.``, ``head_dist.``)."""
    prefixes = []
    get = getattr(model, "get_classifier", None)
    heads = [get()] if callable(get) else []
    if isinstance(getattr(model, "head_dist", None), nn.Module):
        heads.append(model.head_dist)
    for name, module in model.named_modules():
        if name and any(module is h for h in heads):
            prefixes.append(name + ".")
    return tuple(prefixes)


def _strip_checkpoint_prefix(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # archbench's training checkpoints keep the weights under ``model/``.
    if any(k.startswith("model/") for k in sd):
        return {k[len("model/") :]: v for k, v in sd.items() if k.startswith("model/")}
    return sd


def _fit_pos_embed(
    model: nn.Module, key: str, value: torch.Tensor, want: torch.Size
) -> torch.Tensor:
    if value.ndim != 3 or len(want) != 3 or value.shape[2] != want[2]:
        return value
    prefix = int(getattr(model, "num_prefix_tokens", 0))
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if grid is None:
        side = int(round((want[1] - prefix) ** 0.5))
        grid = (side, side)
    try:
        return resample_pos_embed(value, tuple(grid), None, prefix)
    except ValueError:
        return value


class _Plan:
    """A state dict matched against a model: what loads, what is left out, what is wrong."""

    def __init__(self, fmt: str, sd: dict[str, torch.Tensor], model: nn.Module) -> None:
        self.fmt = fmt
        own = model.state_dict()
        heads = _head_names(model)

        def is_head(k: str) -> bool:
            return k.startswith(heads) if heads else False

        self.tensors: dict[str, torch.Tensor] = {}
        self.resized: list[str] = []
        self.head_skipped: list[str] = []
        self.missing: list[str] = []
        self.unexpected: list[str] = []
        self.mismatched: list[str] = []
        for key, value in sd.items():
            if key not in own:
                (self.head_skipped if is_head(key) else self.unexpected).append(key)
                continue
            want = own[key].shape
            if value.shape != want and key.endswith("pos_embed"):
                value = _fit_pos_embed(model, key, value, want)
                if value.shape == want:
                    self.resized.append(key)
            if value.shape != want:
                if is_head(key):
                    self.head_skipped.append(key)
                else:
                    self.mismatched.append(
                        f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(want)}"
                    )
                continue
            self.tensors[key] = value
        for key in own:
            if key in self.tensors or key in sd:
                continue
            if is_head(key):
                self.head_skipped.append(key)
            elif not key.endswith("num_batches_tracked"):
                self.missing.append(key)
        # A classifier layer loads whole or not at all: a skipped weight takes its bias
        # along (and the other way round); the rest of an MLP head still loads.
        parents = {k.rsplit(".", 1)[0] for k in self.head_skipped}
        for key in list(self.tensors):
            if is_head(key) and key.rsplit(".", 1)[0] in parents:
                del self.tensors[key]
                self.head_skipped.append(key)

    @property
    def errors(self) -> int:
        return len(self.missing) + len(self.unexpected) + len(self.mismatched)

    def describe(self) -> str:
        parts = []
        for label, items in (
            ("missing from the checkpoint", self.missing),
            ("not in the model", self.unexpected),
            ("shape differs", self.mismatched),
        ):
            if items:
                more = f" (+{len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
                parts.append(f"{len(items)} {label}: {', '.join(items[:_SHOWN])}{more}")
        return f"with {self.fmt} names, " + "; ".join(parts)


def load_pretrained(model: nn.Module, source: str | os.PathLike[str]) -> dict[str, object]:
    """Load the weights ``source`` names into ``model`` (strict; all or nothing).

    Returns what happened: the file, the name format (``archbench`` or ``timm``), the
    head tensors left at their initialization and the resized position embeddings.
    """
    path = resolve_pretrained(source)
    sd = _strip_checkpoint_prefix(read_safetensors(path))
    if not sd:
        raise ValueError(f"{str(path)!r} holds no tensors")
    plans = [_Plan("archbench", sd, model)]
    if has_timm_mapping(model):
        plans.append(_Plan("timm", from_timm(sd, model), model))
    best = min(plans, key=lambda p: (p.errors, -len(p.tensors)))
    name = getattr(getattr(model, "model_card", None), "variant", "") or type(model).__name__
    if best.errors:
        tried = "; ".join(p.describe() for p in plans)
        raise ValueError(
            f"{str(path)!r} does not fit {name}: {tried}. It is probably a checkpoint of "
            "another architecture or variant: pick the model it was trained as"
        )
    own = model.state_dict()
    new = {k: v.clone() for k, v in own.items()}
    for key, value in best.tensors.items():
        new[key] = value.to(dtype=own[key].dtype)
    model.load_state_dict(new, strict=True)
    if best.head_skipped:
        warnings.warn(
            f"{name}: the classifier of {path.name} does not fit this model "
            f"({getattr(model, 'num_classes', '?')} classes) and was not loaded; "
            f"{', '.join(sorted(best.head_skipped))} keep their fresh initialization",
            HeadResetWarning,
            stacklevel=2,
        )
    return {
        "path": str(path),
        "format": best.fmt,
        "loaded": len(best.tensors),
        "head_reset": sorted(best.head_skipped),
        "resized": best.resized,
    }
