"""Heatmaps over images, saved as PNG, and panels (images x methods) for reports."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

__all__ = ["colorize", "overlay", "save_overlay", "save_panel", "to_display"]


def to_display(
    image: torch.Tensor, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> np.ndarray:
    """A (C, H, W) tensor (normalised with ``mean``/``std`` if given) as an (H, W, 3) uint8 array."""
    x = image.detach().float().cpu()
    if mean is not None and std is not None:
        x = x * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)
    else:  # no statistics: stretch to [0, 1] for viewing
        x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-7)
    x = x.clamp(0, 1)
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    elif x.shape[0] != 3:
        x = x[:3] if x.shape[0] > 3 else torch.cat([x, x[-1:].expand(3 - x.shape[0], -1, -1)])
    return (x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def colorize(saliency: torch.Tensor, cmap: str = "jet") -> np.ndarray:
    """A (H, W) map in [0, 1] as an (H, W, 3) uint8 colour image."""
    from matplotlib import colormaps

    s = saliency.detach().float().cpu().clamp(0, 1).numpy()
    return (colormaps[cmap](s)[..., :3] * 255).round().astype(np.uint8)


def overlay(
    image: np.ndarray, saliency: torch.Tensor, alpha: float = 0.5, cmap: str = "jet"
) -> np.ndarray:
    """Blend a colourised saliency map over an (H, W, 3) uint8 image."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    heat = colorize(saliency, cmap)
    if heat.shape[:2] != image.shape[:2]:
        raise ValueError(f"saliency {heat.shape[:2]} and image {image.shape[:2]} differ in size")
    return (
        ((1 - alpha) * image.astype(np.float32) + alpha * heat.astype(np.float32))
        .round()
        .astype(np.uint8)
    )


def save_overlay(
    path: str | Path, image: np.ndarray, saliency: torch.Tensor, scale: int = 1, alpha: float = 0.5
) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(overlay(image, saliency, alpha))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    img.save(path)
    return path


def save_panel(
    path: str | Path,
    images: list[np.ndarray],
    maps: dict[str, torch.Tensor],
    row_labels: list[str] | None = None,
    title: str | None = None,
) -> Path:
    """A grid: one row per image; the image, then one overlay per method (``maps[method]``: (B, H, W))."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(maps)
    rows, cols = len(images), 1 + len(methods)
    fig, axes = plt.subplots(
        rows, cols, figsize=(1.6 * cols, 1.6 * rows + (0.4 if title else 0)), squeeze=False
    )
    for r, img in enumerate(images):
        axes[r][0].imshow(img)
        axes[r][0].set_ylabel(row_labels[r] if row_labels else "", fontsize=7)
        for c, m in enumerate(methods, 1):
            axes[r][c].imshow(overlay(img, maps[m][r]))
            if r == 0:
                axes[r][c].set_title(m, fontsize=8)
        if r == 0:
            axes[r][0].set_title("image", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
