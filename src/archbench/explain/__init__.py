"""Explanations: the CAM family for every registered model, overlays, and faithfulness scores."""

from .cam import GRADIENT_METHODS, METHODS, eigen_projection, explain, resolve_layer
from .faithfulness import blur_baseline, deletion_insertion, faithfulness_table
from .overlay import colorize, overlay, save_overlay, save_panel, to_display

__all__ = [
    "GRADIENT_METHODS",
    "METHODS",
    "blur_baseline",
    "colorize",
    "deletion_insertion",
    "eigen_projection",
    "explain",
    "faithfulness_table",
    "overlay",
    "resolve_layer",
    "save_overlay",
    "save_panel",
    "to_display",
]
