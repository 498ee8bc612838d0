"""Comparison presets shipped with archbench (``src/archbench/presets/*.yaml``).

A preset is a compare spec (the same keys as ``archbench compare --spec FILE``) stored as
package data, so ``archbench compare --spec kan-vs-mlp-params`` runs it by name.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml

from .compare import CompareSpec

__all__ = ["is_preset", "list_presets", "load_preset", "preset_text"]


def _folder() -> Path:
    return Path(str(resources.files("archbench") / "presets"))


def list_presets() -> list[str]:
    """Names of the shipped presets, sorted."""
    folder = _folder()
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.yaml"))


def is_preset(name: str) -> bool:
    return name in list_presets()


def preset_text(name: str) -> str:
    """The YAML text of preset ``name`` (its comments explain what it compares)."""
    names = list_presets()
    if name not in names:
        import difflib

        close = difflib.get_close_matches(name, names, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown preset {name!r}.{hint} Presets: {', '.join(names)}")
    return (_folder() / f"{name}.yaml").read_text()


def load_preset(name: str) -> CompareSpec:
    """The :class:`CompareSpec` of preset ``name``; a ``ValueError`` lists the presets if unknown."""
    data = yaml.safe_load(preset_text(name))
    return CompareSpec.from_dict(data or {})
