"""Small pieces shared by the pretext and clustering methods of this package.

- :func:`raw_to_float` / :func:`normalize_images`: a batch's uint8 images to [0, 1] floats
  and to the data's normalization (the engine's mean and std), so a task that augments
  ``batch.raw`` itself feeds the model what the engine would.
- :func:`simple_view`: one batched random view (resized crop and flip, colour jitter,
  grayscale; :mod:`.augment`'s operations) in [0, 1].
- :func:`pooled_features`: the pooled pre-logit features of any registered model.
- :func:`ema_update`: momentum teacher update.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..data.transforms import random_resized_crop
from .augment import color_jitter, grayscale, normalizer, to_unit

__all__ = [
    "ema_update",
    "normalize_images",
    "pooled_features",
    "raw_to_float",
    "simple_view",
]


def raw_to_float(raw: torch.Tensor | None) -> torch.Tensor:
    """uint8 (B, C, H, W) in [0, 255] -> float in [0, 1]; float input is returned as is."""
    if raw is None:
        raise ValueError("this task augments the batch's raw images; the batch has none")
    return to_unit(raw).float()


def normalize_images(x: torch.Tensor, data: Any) -> torch.Tensor:
    """[0, 1] images -> the data's normalization ``(x - mean) / std`` (as the engine does)."""
    return normalizer(data)(x)


def simple_view(
    x: torch.Tensor,
    size: int | None = None,
    scale: tuple[float, float] = (0.2, 1.0),
    jitter: float = 0.4,
    gray_p: float = 0.2,
) -> torch.Tensor:
    """A random view of [0, 1] images: resized crop (area share in ``scale``) and flip,
    colour jitter (brightness, contrast, saturation ``jitter``, hue ``jitter / 4``, p=0.8)
    and grayscale with probability ``gray_p``. Draws from torch's global generator."""
    out = random_resized_crop(x, size or x.shape[-1], scale=scale)
    if jitter > 0:
        out = color_jitter(out, jitter, jitter, jitter, jitter / 4, p=0.8)
    if gray_p > 0:
        out = grayscale(out, gray_p)
    return out


def pooled_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, num_features): the model's pooled features before its classifier."""
    return model.forward_head(model.forward_features(x), pre_logits=True)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``teacher = momentum * teacher + (1 - momentum) * student`` (parameters and float
    buffers such as BatchNorm statistics; integer buffers are copied)."""
    for pt, ps in zip(teacher.parameters(), student.parameters(), strict=True):
        pt.mul_(momentum).add_(ps.detach(), alpha=1 - momentum)
    for bt, bs in zip(teacher.buffers(), student.buffers(), strict=True):
        if bt.dtype.is_floating_point:
            bt.mul_(momentum).add_(bs.detach(), alpha=1 - momentum)
        else:
            bt.copy_(bs)
