"""Tiny data and a compression context shared by the seed-paper pruning tests."""

from __future__ import annotations

import torch

from archbench.compress import CompressContext
from archbench.data import load_dataset
from archbench.train import load_recipe

SPEC = "shapes:n_train=64,n_val=32,n_test=16,img_size=16,num_classes=4"


def tiny_data():
    return load_dataset(SPEC, seed=0)


def tiny_recipe(epochs: int = 1):
    return load_recipe("cpu-fast").replace(
        epochs=epochs, batch_size=16, eval_batch_size=32, warmup_epochs=0, lr=2e-3
    )


def tiny_context(data, out_dir=None, epochs: int = 1, batch: int = 16) -> CompressContext:
    """A context over ``data``: normalized calibration batches of its train split."""

    def calibration():
        imgs = data.train.images.float() / 255.0
        mean = torch.tensor(data.mean).view(1, -1, 1, 1)
        std = torch.tensor(data.std).view(1, -1, 1, 1)
        imgs = (imgs - mean) / std
        for i in range(0, imgs.shape[0], batch):
            yield imgs[i : i + batch]

    def batches():
        labels = data.train.labels
        for i, imgs in enumerate(calibration()):
            yield imgs, labels[i * batch : i * batch + imgs.shape[0]]

    return CompressContext(
        data=data,
        calibration=calibration,
        batches=batches,
        recipe=tiny_recipe(epochs),
        input_shape=tuple(data.train.images.shape[1:]),
        out_dir=out_dir,
    )
