"""Compression: structured pruning, token pruning and post-training quantization.

Every method is a registered compressor (:func:`register_compressor`), a function
``fn(model, ctx, **args) -> CompressResult``; methods that train are also registered tasks.
Importing this package imports every module in it, which registers them.
``archbench compress`` runs one method and measures the model before and after.
"""

from __future__ import annotations

import importlib
import pkgutil

from .registry import (
    CompressContext,
    CompressResult,
    check_compressor,
    compressor_arguments,
    create_compressor,
    has_replay,
    list_compressors,
    register_compressor,
    replay_compression,
)

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "CompressContext",
    "CompressResult",
    "check_compressor",
    "compressor_arguments",
    "create_compressor",
    "has_replay",
    "list_compressors",
    "register_compressor",
    "replay_compression",
]
