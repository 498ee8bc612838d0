"""Datasets held as uint8 tensors, the bundle every loader returns, and spec parsing.

A dataset spec is a string ``name[:arg][,key=value...]``, for example ``shapes``,
``shapes:num_classes=10,img_size=32``, ``folder:/data/pets,img_size=64`` or
``npz:/data/x.npz``. Images are kept as ``uint8`` tensors ``(N, C, H, W)`` so that a
whole split fits in memory and batches are sliced, not decoded, during training.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = [
    "DataBundle",
    "ImageTensorDataset",
    "channel_stats",
    "parse_options",
    "split_indices",
]


class ImageTensorDataset(torch.utils.data.Dataset):
    """Images ``(N, C, H, W)`` uint8, integer labels ``(N,)`` and optional object masks.

    ``dataset[i]`` gives ``(float image in [0, 1], label)``; training reads ``images``
    directly in batches.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        masks: torch.Tensor | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                f"images must be a uint8 tensor (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        if labels.ndim != 1 or len(labels) != len(images):
            raise ValueError(f"labels must have shape ({len(images)},), got {tuple(labels.shape)}")
        if masks is not None and tuple(masks.shape) != (len(images), *images.shape[-2:]):
            raise ValueError(f"masks must have shape (N, H, W), got {tuple(masks.shape)}")
        self.images = images.contiguous()
        self.labels = labels.long().contiguous()
        self.masks = masks
        # Normalization of the bundle this split belongs to (set by DataBundle).
        self.mean: tuple[float, ...] | None = None
        self.std: tuple[float, ...] | None = None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i].float().div_(255.0), int(self.labels[i])

    def get_mask(self, i: int) -> torch.Tensor:
        """The object mask ``(H, W)`` bool of image ``i`` (only datasets that know it)."""
        if self.masks is None:
            raise ValueError("this dataset has no object masks (only `shapes` provides them)")
        return self.masks[i]

    def subset(self, idx: torch.Tensor) -> ImageTensorDataset:
        masks = self.masks[idx] if self.masks is not None else None
        return ImageTensorDataset(self.images[idx], self.labels[idx], masks)

    def class_counts(self, num_classes: int) -> list[int]:
        return torch.bincount(self.labels, minlength=num_classes).tolist()


@dataclass
class DataBundle:
    """Train / validation / test splits of one dataset plus what a model needs to know.

    Validation is what checkpoints and hyper-parameters are chosen on; test is for the
    one reported number. ``mirror_invariant``: whether a horizontally flipped image keeps
    its class (recipes flip only such data; see ``archbench.train.recipe``).
    """

    name: str
    spec: str
    train: ImageTensorDataset
    val: ImageTensorDataset
    test: ImageTensorDataset | None
    num_classes: int
    class_names: list[str]
    in_chans: int
    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    info: dict[str, Any] = field(default_factory=dict)
    mirror_invariant: bool = True

    def __post_init__(self) -> None:
        for split in (self.train, self.val, self.test):
            if split is not None:
                split.mean, split.std = tuple(self.mean), tuple(self.std)

    def split(self, name: str) -> ImageTensorDataset:
        """``"train"``, ``"val"`` or ``"test"``."""
        if name not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {name!r}")
        ds = getattr(self, name)
        if ds is None:
            raise ValueError(f"dataset {self.spec!r} has no {name} split")
        return ds

    def describe(self) -> dict[str, Any]:
        """Classes, split sizes, channels, size, per-channel mean/std and loader notes."""
        d: dict[str, Any] = {
            "name": self.name,
            "spec": self.spec,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "in_chans": self.in_chans,
            "img_size": self.img_size,
            "n_train": len(self.train),
            "n_val": len(self.val),
            "n_test": len(self.test) if self.test is not None else 0,
            "mean": [round(m, 5) for m in self.mean],
            "std": [round(s, 5) for s in self.std],
            "train_class_counts": self.train.class_counts(self.num_classes),
            "mirror_invariant": self.mirror_invariant,
        }
        d.update(self.info)
        return d


# channel_stats converts at most this many pixel values to float64 at a time (128 MB),
# and never more than 4096 images: images of up to 5461 values (3x32x32 is 3072) keep the
# 4096-image chunks, and with them the exact sums, of earlier versions.
_STATS_CHUNK_ELEMENTS = 2**24
_STATS_CHUNK_IMAGES = 4096


def _stats_chunk(images: torch.Tensor) -> int:
    """Images per float64 chunk in ``channel_stats`` for this batch's image size."""
    per_image = max(1, math.prod(images.shape[1:]))
    return min(_STATS_CHUNK_IMAGES, max(1, _STATS_CHUNK_ELEMENTS // per_image))


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images in [0, 1] units.

    Sums run in float64 over chunks of ``_stats_chunk`` images, squared in place, so the
    temporary memory stays near ``8 * _STATS_CHUNK_ELEMENTS`` bytes (one image's worth
    when a single image holds more values) however many images there are.
    """
    c = images.shape[1]
    s = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    n = 0
    for chunk in images.split(_stats_chunk(images)):
        x = chunk.double().div_(255.0)
        s += x.sum(dim=(0, 2, 3))
        s2 += x.mul_(x).sum(dim=(0, 2, 3))
        n += x.shape[0] * x.shape[2] * x.shape[3]
    if n == 0:
        return tuple([0.5] * c), tuple([0.25] * c)
    mean = s / n
    std = (s2 / n - mean * mean).clamp_min(1e-12).sqrt()
    return tuple(float(m) for m in mean), tuple(max(float(v), 1e-3) for v in std)


def split_indices(
    labels: torch.Tensor, fractions: Sequence[float], seed: int
) -> list[torch.Tensor]:
    """Stratified, seeded split of ``range(len(labels))`` into len(fractions)+1 parts.

    ``fractions`` are the shares of the later parts (e.g. val, test); the first part gets
    the rest. Every class with enough samples appears in every part.
    """
    g = torch.Generator().manual_seed(int(seed) + 7919)
    parts: list[list[torch.Tensor]] = [[] for _ in range(len(fractions) + 1)]
    for cls in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == cls).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        start = 0
        sizes = [int(math.floor(f * len(idx) + 0.5)) for f in fractions]
        rest = len(idx) - sum(sizes)
        for p, size in enumerate([rest, *sizes]):
            parts[p].append(idx[start : start + size])
            start += size
    return [torch.sort(torch.cat(p))[0] if p else torch.zeros(0, dtype=torch.long) for p in parts]


def _convert(value: str, default: Any, key: str, name: str) -> Any:
    kind = type(default)
    try:
        if kind is bool:
            low = value.lower()
            if low not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError
            return low in ("1", "true", "yes")
        if kind is int:
            return int(value)
        if kind is float:
            return float(value)
    except ValueError:
        raise ValueError(
            f"dataset {name!r}: option {key}={value!r} must be a {kind.__name__}"
        ) from None
    return value


def parse_options(
    name: str, text: str, defaults: dict[str, Any], positional: str | None = None
) -> dict[str, Any]:
    """Parse ``"arg,key=value,..."`` against ``defaults``; unknown keys are an error.

    ``positional`` names the option a leading bare value fills (a path).
    """
    opts = dict(defaults)
    if not text:
        return opts
    for i, part in enumerate(text.split(",")):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            if i == 0 and positional is not None:
                opts[positional] = part
                continue
            raise ValueError(
                f"dataset {name!r}: expected key=value, got {part!r}; "
                f"accepted keys: {', '.join(sorted(defaults))}"
            )
        key, value = (s.strip() for s in part.split("=", 1))
        if key not in defaults:
            raise ValueError(
                f"dataset {name!r}: unknown option {key!r}; accepted: {', '.join(sorted(defaults))}"
            )
        opts[key] = _convert(value, defaults[key], key, name)
    return opts


Loader = Callable[[str, str, int], DataBundle]
