"""Training: recipes, the fit/evaluate engine, optimizers, callbacks (EMA) and checkpoints.

Depends on torch and archbench.data only; takes any ``nn.Module`` that maps
``(B, C, H, W)`` images to ``(B, num_classes)`` logits.
"""

from __future__ import annotations

from .callbacks import EMA, Callback, TrainState
from .checkpoint import load_checkpoint, read_checkpoint_meta, save_checkpoint
from .engine import FitResult, check_model_data, evaluate, fit, soft_cross_entropy
from .optim import build_optimizer, param_groups
from .recipe import Recipe, list_recipes, load_recipe

__all__ = [
    "EMA",
    "Callback",
    "FitResult",
    "Recipe",
    "TrainState",
    "build_optimizer",
    "check_model_data",
    "evaluate",
    "fit",
    "list_recipes",
    "load_checkpoint",
    "load_recipe",
    "param_groups",
    "read_checkpoint_meta",
    "save_checkpoint",
    "soft_cross_entropy",
]
