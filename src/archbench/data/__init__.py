"""Datasets, batched augmentation and loaders. Depends on torch (numpy, pillow, sklearn);
knows nothing about archbench models.

``load_dataset(spec, seed)`` is the one way in::

    load_dataset("shapes")                                  # procedural, 10 classes, 32x32
    load_dataset("shapes:num_classes=20,img_size=32,n_train=5000")
    load_dataset("digits")                                  # scikit-learn 8x8 digits -> 32x32
    load_dataset("folder:/data/pets,img_size=64")           # root/<class>/<image>
    load_dataset("cifar10:/data/cifar"); load_dataset("cifar100:/data/cifar")
    load_dataset("npz:/data/arrays.npz")
    load_dataset("folder:/data/imagenet,stream=1,workers=4")  # decoded as read (stream.py)
    load_dataset("shards:/data/in1k/{000000..000127}.tar")     # webdataset tar shards
"""

from __future__ import annotations

from functools import partial

from .base import DataBundle, ImageTensorDataset, channel_stats, parse_options, split_indices
from .loader import BatchLoader, epoch_generator
from .shapes import load_shapes, make_shapes, shapes_class_table
from .sources import load_cifar, load_digits, load_folder, load_npz
from .stream import (
    StreamLoader,
    StreamSplit,
    load_shards,
    load_stream_folder,
    make_loader,
    pack_folder,
    split_stream_option,
)
from .transforms import BatchAugment

__all__ = [
    "BatchAugment",
    "BatchLoader",
    "DataBundle",
    "ImageTensorDataset",
    "StreamLoader",
    "StreamSplit",
    "channel_stats",
    "epoch_generator",
    "list_datasets",
    "load_dataset",
    "make_loader",
    "make_shapes",
    "pack_folder",
    "parse_options",
    "shapes_class_table",
    "split_indices",
]


def _load_folder(spec: str, options: str, seed: int) -> DataBundle:
    """``folder:PATH`` in memory, or streamed with ``stream=1``."""
    stream, rest = split_stream_option(options)
    return load_stream_folder(spec, options, seed) if stream else load_folder(spec, rest, seed)


_LOADERS = {
    "shapes": load_shapes,
    "digits": load_digits,
    "folder": _load_folder,
    "shards": load_shards,
    "cifar10": partial(load_cifar, variant="cifar10"),
    "cifar100": partial(load_cifar, variant="cifar100"),
    "npz": load_npz,
}


def list_datasets() -> list[str]:
    return sorted(_LOADERS)


def load_dataset(spec: str, seed: int = 0) -> DataBundle:
    """Load a dataset from its spec ``name[:path][,key=value...]`` (see module docstring).

    ``seed`` fixes the procedural data and the train/val/test split of data that has none.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"dataset spec must be a non-empty string such as 'shapes', got {spec!r}")
    spec = spec.strip()
    name, _, options = spec.partition(":")
    name = name.strip().lower()
    if name not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; accepted: {', '.join(list_datasets())}")
    return _LOADERS[name](spec, options, int(seed))
