"""Batches straight from in-memory uint8 tensors: a seeded permutation and a slice.

No worker processes and no per-sample ``__getitem__``: a batch is one ``index_select``
on the image tensor, which costs microseconds next to a training step.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .base import ImageTensorDataset

__all__ = ["BatchLoader", "epoch_generator"]


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """A generator whose state depends only on (seed, epoch, stream)."""
    return torch.Generator().manual_seed(
        (int(seed) * 1_000_003 + int(epoch) * 7919 + stream) % (2**63)
    )


class BatchLoader:
    """Iterate ``(uint8 images, labels)`` batches of an :class:`ImageTensorDataset`.

    ``batches(epoch, start=k)`` gives the same order for the same (seed, epoch), so a
    resumed run can skip the ``k`` batches it has already trained on.
    """

    def __init__(
        self,
        dataset: ImageTensorDataset,
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = True,
        seed: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last and len(dataset) >= batch_size
        self.seed = seed

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self, epoch: int) -> torch.Tensor:
        n = len(self.dataset)
        if not self.shuffle:
            return torch.arange(n)
        return torch.randperm(n, generator=epoch_generator(self.seed, epoch, stream=1))

    def batches(
        self, epoch: int = 0, start: int = 0, with_index: bool = False
    ) -> Iterator[tuple[torch.Tensor, ...]]:
        """``(images, labels)`` batches, or ``(images, labels, indices)`` with ``with_index``
        (each sample's position in the dataset)."""
        idx = self.order(epoch)
        images, labels = self.dataset.images, self.dataset.labels
        for b in range(start, len(self)):
            sel = idx[b * self.batch_size : (b + 1) * self.batch_size]
            batch = (images.index_select(0, sel), labels.index_select(0, sel))
            yield (*batch, sel) if with_index else batch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.batches(0)
