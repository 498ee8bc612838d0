"""RotNet: Gidaris, Singh & Komodakis, *Unsupervised Representation Learning by Predicting
Image Rotations* (ICLR 2018).

Every image is shown at 0, 90, 180 and 270 degrees in the same batch (the paper's best
setting: all four rotations of an image together) and a 4-way classifier on the
encoder's pooled features predicts which rotation was applied. The paper's classifier
sits on the conv features of a NIN block; here it is a linear layer on the pooled
pre-logits, so that every registered backbone (CNN, ViT, mixer) can be the encoder; the
paper's random crop + flip of the training images is kept (``crop_pad`` pixels), drawn
before the rotations.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn
import torch.nn.functional as F

from ..data.transforms import random_crop_flip
from ..train.tasks import Batch, register_task
from .augment import rotation_batch
from .base import SSLTask, encode, pooled_width

__all__ = ["RotNet"]


@register_task("rotnet")
class RotNet(SSLTask):
    """Predict which of the four rotations by 90 degrees an image went through."""

    def __init__(self, crop_pad: int = 4) -> None:
        super().__init__()
        if crop_pad < 0:
            raise ValueError(f"crop_pad must be >= 0, got {crop_pad}")
        self.crop_pad = crop_pad

    def check(self, model: nn.Module, data: Any) -> None:
        super().check(model, data)
        h, w = data.val.images.shape[-2:]
        if h != w:
            raise ValueError(
                f"rotnet needs square images (rotations by 90 degrees keep the shape), got "
                f"{h}x{w}; load the data with img_size={min(h, w)}"
            )

    def setup(self, model: nn.Module, data: Any, recipe: Any) -> None:
        super().setup(model, data, recipe)
        self.trainable["rotation_head"] = nn.Linear(pooled_width(model), 4)

    def step(self, batch: Batch, state: Any) -> dict[str, Any]:
        x = self.raw_images(batch)
        if state.model.training and self.crop_pad > 0:
            x = random_crop_flip(x, self.crop_pad)
        rotated, target = rotation_batch(self.normalize(x))
        logits = self.trainable["rotation_head"](encode(state.model, rotated))
        loss = F.cross_entropy(logits.float(), target)
        acc = (logits.detach().argmax(-1) == target).float().mean()
        return {"loss": loss, "rot_acc": acc}

    def eval_step(self, batch: Batch, state: Any) -> dict[str, float]:
        out = self.step(batch, state)
        return {"loss": float(out["loss"]), "rot_acc": float(out["rot_acc"])}
