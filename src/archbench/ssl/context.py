"""Context prediction: *Unsupervised Visual Representation Learning by Context Prediction*
(Doersch, Gupta and Efros, ICCV 2015).

A patch is cut from the middle of a 3x3 grid in each image and a second one from one of
its 8 neighbours; a pair network (the backbone shared by both patches, its two pooled
features concatenated, then a two-layer classifier) predicts which of the 8 relative
positions the second patch came from. The positions are numbered as in the paper's
figure 2, row by row without the centre: 0 top-left, 1 top, 2 top-right, 3 left,
4 right, 5 bottom-left, 6 bottom, 7 bottom-right. The paper's guards against trivial
shortcuts are kept: a ``gap`` between grid cells, a random ``jitter`` of each patch by up
to that many pixels, and colour dropping (two of the three colour channels of each patch
replaced by Gaussian noise with 1/100 of the kept channel's standard deviation) against
chromatic aberration.

Where archbench differs: patches are scaled to the image (the paper's 96-pixel patches
with 48-pixel gaps on ~ 400-pixel images become, by default, ``patch = 8`` pixels with
``gap = 2`` and ``jitter = 1`` on 32x32 images); a patch is resized to the model's input
size when the model cannot take it as it is (a ViT's fixed token grid); the classifier's
hidden layer is ``hidden`` wide (the paper's fc6-fc8 are 4096 wide).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..train import register_task
from ._pretext import normalize_images, pooled_features, raw_to_float
from .base import SSLTask

__all__ = ["ContextPrediction", "NEIGHBOUR_OFFSETS", "color_drop", "sample_patch_pairs"]

# (row, column) offset of the neighbour, in grid cells, for each of the 8 classes
NEIGHBOUR_OFFSETS: tuple[tuple[int, int], ...] = (
    (-1, -1),
    (-1, 0),
    (-1, 1),
    (0, -1),
    (0, 1),
    (1, -1),
    (1, 0),
    (1, 1),
)


def sample_patch_pairs(
    images: torch.Tensor,
    patch: int,
    gap: int,
    jitter: int,
    positions: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(centre patches, neighbour patches, positions) for a batch of images.

    The 3x3 grid of ``patch``-sized cells separated by ``gap`` pixels is placed at a random
    offset in each image; each patch is moved by up to ``jitter`` pixels either way.
    ``positions`` (B,) in [0, 8) picks the neighbour (random when None).
    """
    b, _, h, w = images.shape
    cell = patch + gap
    span = 3 * patch + 2 * gap + 2 * jitter
    if span > min(h, w):
        raise ValueError(
            f"context prediction: 3 patches of {patch} px with gaps of {gap} px and jitter "
            f"{jitter} need {span} px but the images are {h}x{w}; lower patch, gap or jitter"
        )
    dev = images.device

    def randint(high: int) -> torch.Tensor:
        return torch.randint(0, high, (b,), generator=generator).to(dev)

    if positions is None:
        positions = randint(8)
    offsets = torch.tensor(NEIGHBOUR_OFFSETS, device=dev)[positions]
    top = randint(h - span + 1) + jitter
    left = randint(w - span + 1) + jitter

    def cut(row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
        y = top + row * cell + randint(2 * jitter + 1) - jitter
        x = left + col * cell + randint(2 * jitter + 1) - jitter
        ar = torch.arange(patch, device=dev)
        ys = (y.view(b, 1) + ar.view(1, -1)).view(b, 1, patch, 1)
        xs = (x.view(b, 1) + ar.view(1, -1)).view(b, 1, 1, patch)
        bi = torch.arange(b, device=dev).view(b, 1, 1, 1)
        ci = torch.arange(images.shape[1], device=dev).view(1, -1, 1, 1)
        return images[bi, ci, ys, xs]

    ones = torch.ones(b, dtype=torch.long, device=dev)
    centre = cut(ones, ones)
    neighbour = cut(1 + offsets[:, 0], 1 + offsets[:, 1])
    return centre, neighbour, positions


def color_drop(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Keep one random colour channel per image; replace the others by Gaussian noise with
    1/100 of the kept channel's standard deviation (around its mean). Single-channel
    input is returned as is."""
    b, c = x.shape[:2]
    if c == 1:
        return x
    keep = torch.randint(0, c, (b,), generator=generator).to(x.device)
    kept = x[torch.arange(b, device=x.device), keep].unsqueeze(1)
    std = kept.std(dim=(1, 2, 3), keepdim=True)
    mean = kept.mean(dim=(1, 2, 3), keepdim=True)
    noise = torch.randn(x.shape, generator=generator).to(x.device) * std / 100 + mean
    mask = F.one_hot(keep, c).to(x.dtype).view(b, c, 1, 1)
    return x * mask + noise * (1 - mask)


@register_task("context_prediction")
class ContextPrediction(SSLTask):
    """Predict the relative position (8 classes) of a neighbouring patch."""

    views = 1

    def __init__(
        self,
        patch: int = 8,
        gap: int = 2,
        jitter: int = 1,
        hidden: int = 256,
        color_dropping: bool = True,
    ) -> None:
        super().__init__()
        if patch < 1 or gap < 0 or jitter < 0 or hidden < 1:
            raise ValueError(
                "context_prediction: patch and hidden must be >= 1, gap and jitter >= 0; got "
                f"patch={patch}, gap={gap}, jitter={jitter}, hidden={hidden}"
            )
        self.patch, self.gap, self.jitter = patch, gap, jitter
        self.hidden = hidden
        self.color_dropping = color_dropping
        self.input_size = patch

    def setup(self, model: nn.Module, data: Any, recipe: Any) -> None:
        super().setup(model, data, recipe)
        span = 3 * self.patch + 2 * self.gap + 2 * self.jitter
        if span > data.img_size:
            raise ValueError(
                f"context_prediction: the 3x3 grid needs {span} px, images are "
                f"{data.img_size} px; lower patch, gap or jitter"
            )
        side_ok = getattr(model, "input_side_ok", None)
        ok = side_ok(self.patch) if callable(side_ok) else True
        self.input_size = self.patch if ok else data.img_size
        self.data = data
        f = model.num_features
        self.trainable["classifier"] = nn.Sequential(
            nn.Linear(2 * f, self.hidden), nn.ReLU(inplace=True), nn.Linear(self.hidden, 8)
        )

    def encode(self, model: nn.Module, patches: torch.Tensor) -> torch.Tensor:
        if patches.shape[-1] != self.input_size:
            patches = F.interpolate(
                patches, size=self.input_size, mode="bilinear", align_corners=False
            )
        return pooled_features(model, patches)

    def logits(self, batch: Any, state: Any) -> tuple[torch.Tensor, torch.Tensor]:
        x = raw_to_float(batch.raw)
        centre, neighbour, pos = sample_patch_pairs(x, self.patch, self.gap, self.jitter)
        if self.color_dropping:
            centre, neighbour = color_drop(centre), color_drop(neighbour)
        pair = torch.cat([centre, neighbour], dim=0)
        feats = self.encode(state.model, normalize_images(pair, state.data))
        b = centre.shape[0]
        joint = torch.cat([feats[:b], feats[b:]], dim=1)
        return self.trainable["classifier"](joint), pos

    def step(self, batch: Any, state: Any) -> dict[str, Any]:
        logits, pos = self.logits(batch, state)
        loss = F.cross_entropy(logits.float(), pos)
        return {"loss": loss, "acc": (logits.detach().argmax(-1) == pos).float().mean()}

    def eval_step(self, batch: Any, state: Any) -> dict[str, float]:
        out = self.step(batch, state)
        return {"loss": float(out["loss"]), "acc": float(out["acc"])}
