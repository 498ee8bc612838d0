"""Model families. Each module registers its variants; importing this package loads them all.

A family lives in one file (``resnet.py``, ``vit.py``, ...); new files are found
automatically, so adding a family never means editing this module.
"""

import importlib
import pkgutil

from ._base import FeatureInfo, ImageClassifier
from ._registry import (
    ModelCard,
    UnknownModelError,
    build_model,
    create_model,
    get_model_card,
    list_families,
    list_models,
    register_model,
)

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if not _module.startswith("_"):
        importlib.import_module(f"{__name__}.{_module}")

__all__ = [
    "FeatureInfo",
    "ImageClassifier",
    "ModelCard",
    "UnknownModelError",
    "build_model",
    "create_model",
    "get_model_card",
    "list_families",
    "list_models",
    "register_model",
]
