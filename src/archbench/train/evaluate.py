"""Classification metrics of a model on a dataset, and the model/data check before training.

``evaluate`` is what ``archbench eval``, ``compare`` and the EMA callback report; the
default classification task's ``eval_step`` computes the same sums
(:func:`archbench.train.tasks.classification_metrics`), so a run's validation figures and
a later ``evaluate`` of its checkpoint agree.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.nn as nn

from ..data.base import DataBundle, ImageTensorDataset
from ..data.transforms import normalize
from .tasks import classification_metrics

__all__ = ["autocast", "check_model_data", "evaluate", "model_device", "normalized_batches"]


def model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def autocast(precision: str, device: torch.device):
    """Autocast on ``device`` for a recipe's ``precision`` (``fp32``: off)."""
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=precision in ("bf16", "fp16"))


def normalized_batches(
    data: ImageTensorDataset,
    batch_size: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(images in [0, 1] normalized, labels, indices)`` in order, for evaluation."""
    m = mean if mean is not None else data.mean
    s = std if std is not None else data.std
    channels = data.images.shape[1]
    mt = torch.tensor(m if m is not None else [0.0] * channels)
    st = torch.tensor(s if s is not None else [1.0] * channels)
    if hasattr(data, "ordered_batches"):  # a streamed split: decoded in worker processes
        for x, y, idx in data.ordered_batches(batch_size):
            yield normalize(x.float().div_(255.0), mt, st), y, idx
        return
    for i in range(0, len(data), batch_size):
        x = data.images[i : i + batch_size].float().div_(255.0)
        idx = torch.arange(i, min(i + batch_size, len(data)))
        yield normalize(x, mt, st), data.labels[i : i + batch_size], idx


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: DataBundle | ImageTensorDataset | torch.utils.data.Dataset | Iterable,
    *,
    split: str = "val",
    batch_size: int = 256,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    precision: str = "fp32",
    per_sample: bool = False,
) -> dict[str, Any]:
    """Top-1, top-5 (top-k for k = min(5, classes)), mean cross-entropy and count.

    Accuracies are fractions in [0, 1]. ``data``: a :class:`DataBundle` (its ``split``),
    an :class:`ImageTensorDataset` (normalized with ``mean``/``std`` or the bundle's),
    any map-style dataset of ``(image, label)``, or an iterable of ``(images, labels)``
    batches ready for the model. The model's train/eval mode is restored afterwards.
    ``per_sample``: also return ``"correct"``, a boolean tensor with one entry per sample
    in the data's order (top-1 right or wrong), for the test set's sampling noise.
    """
    if isinstance(data, DataBundle):
        data = data.split(split)
    dev = model_device(model)
    if isinstance(data, ImageTensorDataset):
        batches: Iterable = ((x, y) for x, y, _ in normalized_batches(data, batch_size, mean, std))
    elif isinstance(data, torch.utils.data.Dataset):
        batches = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
    else:
        batches = data
    was_training = model.training
    model.eval()
    sums = {"loss": 0.0, "top1": 0.0, "top5": 0.0, "n": 0.0}
    correct: list[torch.Tensor] = []
    try:
        for x, y in batches:
            x, y = x.to(dev), torch.as_tensor(y).to(dev)
            with autocast(precision, dev):
                logits = model(x)
            for k, v in classification_metrics(logits, y).items():
                sums[k] += v
            if per_sample:  # the same top-1 rule as classification_metrics
                correct.append((logits.float().topk(1, dim=-1).indices[:, 0] == y).cpu())
    finally:
        model.train(was_training)
    n = int(sums["n"])
    if n == 0:
        raise ValueError("evaluate: the data holds no samples")
    out: dict[str, Any] = {
        "top1": sums["top1"] / n,
        "top5": sums["top5"] / n,
        "loss": sums["loss"] / n,
        "n": n,
    }
    if per_sample:
        out["correct"] = torch.cat(correct)
    return out


def check_model_data(model: nn.Module, data: DataBundle, *, logits: bool = True) -> None:
    """Fail before training when the model cannot take the data's images or classes.

    ``logits``: also require ``(batch, classes)`` logits (tasks without labels, such as
    self-supervised pretraining, only need the forward pass to work).
    """
    in_chans = getattr(model, "in_chans", None)
    if isinstance(in_chans, int) and in_chans != data.in_chans:
        raise ValueError(
            f"the model takes in_chans={in_chans} but dataset {data.spec!r} has "
            f"{data.in_chans} channel(s); build the model with in_chans={data.in_chans} "
            f"(or load the data with channels={in_chans})"
        )
    num_classes = getattr(model, "num_classes", None)
    if logits and isinstance(num_classes, int) and num_classes != data.num_classes:
        raise ValueError(
            f"the model has num_classes={num_classes} but dataset {data.spec!r} has "
            f"{data.num_classes} classes; build it with num_classes={data.num_classes}"
        )
    x = data.val.images[:2].float().div_(255.0).to(model_device(model))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as err:
        raise ValueError(
            f"the model cannot take this dataset's images (batch {tuple(x.shape)}): {err}"
        ) from err
    finally:
        model.train(was_training)
    if logits and (out.ndim != 2 or out.shape[1] != data.num_classes):
        raise ValueError(
            f"the model returns shape {tuple(out.shape)}; expected (batch, {data.num_classes}) logits"
        )
