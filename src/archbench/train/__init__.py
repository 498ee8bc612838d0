"""Training: recipes, the fit loop, tasks (what a step computes), callbacks (hooks around
the step, EMA), evaluation, optimizers and checkpoints.

Depends on torch and archbench.data only; takes any ``nn.Module`` that maps
``(B, C, H, W)`` images to ``(B, num_classes)`` logits.
"""

from __future__ import annotations

from .callbacks import EMA, Callback, TrainState
from .checkpoint import load_checkpoint, read_checkpoint_meta, save_checkpoint
from .engine import FitResult, fit, validate
from .evaluate import check_model_data, evaluate
from .optim import build_optimizer, param_groups
from .recipe import Recipe, list_recipes, load_recipe
from .tasks import (
    Batch,
    ClassificationTask,
    Task,
    classification_metrics,
    create_task,
    list_tasks,
    register_task,
    soft_cross_entropy,
)

__all__ = [
    "EMA",
    "Batch",
    "Callback",
    "ClassificationTask",
    "FitResult",
    "Task",
    "Recipe",
    "TrainState",
    "build_optimizer",
    "check_model_data",
    "classification_metrics",
    "create_task",
    "evaluate",
    "fit",
    "list_recipes",
    "list_tasks",
    "load_checkpoint",
    "load_recipe",
    "param_groups",
    "read_checkpoint_meta",
    "register_task",
    "save_checkpoint",
    "soft_cross_entropy",
    "validate",
]
