"""Augmentation on whole batches: every op draws per-sample parameters as tensors and
applies them in one vectorized call (no per-image Python loop).

- random resized crop and padded random crop (one ``affine_grid`` + ``grid_sample``),
  horizontal flip folded into the same affine;
- normalization with per-channel mean/std;
- Cutout (DeVries & Taylor, *Improved Regularization of Convolutional Neural Networks
  with Cutout*, 2017): one zeroed square per image, centre anywhere in the image;
- Mixup (Zhang et al., 2018) and CutMix (Yun et al., *CutMix*, 2019) with soft targets;
  one mixing ratio per batch, the batch mixed with itself reversed, CutMix's ratio
  corrected to the pasted area;
- label smoothing (Szegedy et al., 2016) folded into the soft targets.

All randomness comes from the ``torch.Generator`` passed in, so a batch's augmentation is
reproducible from that generator's state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "BatchAugment",
    "cutmix",
    "cutout",
    "mixup",
    "normalize",
    "one_hot_smooth",
    "random_crop_flip",
    "random_flip",
    "random_resized_crop",
]


def _rand(n: int, g: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=g).to(device)


def _affine_sample(
    x: torch.Tensor, theta: torch.Tensor, size: int, mode: str, padding: str
) -> torch.Tensor:
    grid = F.affine_grid(
        theta.to(x.dtype), [x.shape[0], x.shape[1], size, size], align_corners=False
    )
    return F.grid_sample(x, grid, mode=mode, padding_mode=padding, align_corners=False)


def random_resized_crop(
    x: torch.Tensor,
    size: int,
    scale: tuple[float, float] = (0.35, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Crop a random box (area share in ``scale``, aspect in ``ratio``) from each image and
    resize it to ``size``; flip horizontally with probability ``hflip``. Bilinear."""
    b, dev = x.shape[0], x.device
    area = scale[0] + (scale[1] - scale[0]) * _rand(b, generator, dev)
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * _rand(
        b, generator, dev
    )
    r = torch.exp(log_r)
    w = torch.sqrt(area * r).clamp(max=1.0)  # share of the width
    h = torch.sqrt(area / r).clamp(max=1.0)
    cx = (1 - w) * (2 * _rand(b, generator, dev) - 1)
    cy = (1 - h) * (2 * _rand(b, generator, dev) - 1)
    flip = torch.where(_rand(b, generator, dev) < hflip, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    return _affine_sample(x, theta, size, "bilinear", "border")


def random_crop_flip(
    x: torch.Tensor,
    pad: int = 4,
    hflip: float = 0.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Shift each image by a random whole number of pixels in [-pad, pad] with zero fill
    (the same as zero-padding by ``pad`` and taking a random crop), and flip."""
    b, dev = x.shape[0], x.device
    hgt, wid = x.shape[-2:]
    dx = torch.randint(-pad, pad + 1, (b,), generator=generator).to(dev)
    dy = torch.randint(-pad, pad + 1, (b,), generator=generator).to(dev)
    flip = torch.where(_rand(b, generator, dev) < hflip, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 2] = flip, 2 * dx / wid
    theta[:, 1, 1], theta[:, 1, 2] = 1.0, 2 * dy / hgt
    if hgt != wid:
        raise ValueError(f"random_crop_flip expects square images, got {(hgt, wid)}")
    return _affine_sample(x, theta, hgt, "nearest", "zeros")


def random_flip(
    x: torch.Tensor, p: float = 0.5, generator: torch.Generator | None = None
) -> torch.Tensor:
    mask = (_rand(x.shape[0], generator, x.device) < p).view(-1, 1, 1, 1)
    return torch.where(mask, x.flip(-1), x)


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def cutout(
    x: torch.Tensor, length: int, p: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Zero one ``length`` x ``length`` square per image (clipped at the border)."""
    b, _, h, w = x.shape
    dev = x.device
    cy = torch.randint(0, h, (b,), generator=generator).to(dev).view(b, 1, 1)
    cx = torch.randint(0, w, (b,), generator=generator).to(dev).view(b, 1, 1)
    apply = (_rand(b, generator, dev) < p).view(b, 1, 1)
    yy = torch.arange(h, device=dev).view(1, h, 1)
    xx = torch.arange(w, device=dev).view(1, 1, w)
    lo = length // 2
    hole = (yy >= cy - lo) & (yy < cy - lo + length) & (xx >= cx - lo) & (xx < cx - lo + length)
    return x * (~(hole & apply)).unsqueeze(1).to(x.dtype)


def one_hot_smooth(y: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """Soft targets: ``1 - smoothing`` on the label plus ``smoothing / K`` everywhere."""
    off = smoothing / num_classes
    t = torch.full((y.shape[0], num_classes), off, device=y.device)
    return t.scatter_(1, y.view(-1, 1), 1.0 - smoothing + off)


def _beta(alpha: float, generator: torch.Generator | None) -> float:
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def mixup(
    x: torch.Tensor, t: torch.Tensor, alpha: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mix the batch with itself reversed: ``lam * x + (1 - lam) * x.flip(0)``."""
    lam = _beta(alpha, generator)
    return x * lam + x.flip(0) * (1 - lam), t * lam + t.flip(0) * (1 - lam), lam


def cutmix(
    x: torch.Tensor, t: torch.Tensor, alpha: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Paste one box from the reversed batch; targets weighted by the pasted area (CutMix)."""
    lam = _beta(alpha, generator)
    h, w = x.shape[-2:]
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy = int(torch.randint(0, h, (1,), generator=generator))
    cx = int(torch.randint(0, w, (1,), generator=generator))
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch - ch // 2, h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw - cw // 2, w)
    out = x.clone()
    out[:, :, y0:y1, x0:x1] = x.flip(0)[:, :, y0:y1, x0:x1]
    lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
    return out, t * lam + t.flip(0) * (1 - lam), lam


@dataclass
class BatchAugment:
    """The whole training-time pipeline for one batch of images in [0, 1].

    ``crop``: ``"rrc"`` (random resized crop), ``"pad"`` (padded random crop) or
    ``"none"``. Returns normalized images and soft targets ``(B, num_classes)``.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    img_size: int
    crop: str = "pad"
    crop_scale: tuple[float, float] = (0.35, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    crop_pad: int = 4
    hflip: float = 0.5
    cutout: int = 0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0
    switch_prob: float = 0.5
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        if self.crop not in ("rrc", "pad", "none"):
            raise ValueError(f"crop must be 'rrc', 'pad' or 'none', got {self.crop!r}")
        self._mean = torch.tensor(self.mean, dtype=torch.float32)
        self._std = torch.tensor(self.std, dtype=torch.float32)

    def view(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One augmented view without targets: crop, flip, normalize and Cutout (no mixing).

        Multi-view tasks draw each further view of a batch with this."""
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        if self.crop == "rrc":
            x = random_resized_crop(
                x, self.img_size, self.crop_scale, self.crop_ratio, self.hflip, generator
            )
        elif self.crop == "pad":
            x = random_crop_flip(x, self.crop_pad, self.hflip, generator)
        elif self.hflip > 0:
            x = random_flip(x, self.hflip, generator)
        x = normalize(x, self._mean.to(x.device), self._std.to(x.device))
        if self.cutout > 0:
            x = cutout(x, self.cutout, 1.0, generator)
        return x

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.view(x, generator)
        t = one_hot_smooth(y, self.num_classes, self.label_smoothing)
        use_mix = self.mixup_alpha > 0 or self.cutmix_alpha > 0
        if use_mix and float(torch.rand(1, generator=generator)) < self.mix_prob:
            use_cutmix = self.cutmix_alpha > 0 and (
                self.mixup_alpha <= 0
                or float(torch.rand(1, generator=generator)) < self.switch_prob
            )
            if use_cutmix:
                x, t, _ = cutmix(x, t, self.cutmix_alpha, generator)
            else:
                x, t, _ = mixup(x, t, self.mixup_alpha, generator)
        return x, t

    def eval(self, x: torch.Tensor) -> torch.Tensor:
        """Evaluation-time transform: scale to [0, 1] and normalize."""
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        return normalize(x, self._mean.to(x.device), self._std.to(x.device))
