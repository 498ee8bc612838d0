"""What every self-supervised method shares: the label-free task base, the encoder call and
the projection head.

:class:`SSLTask` is a :class:`archbench.train.Task` with ``uses_labels = False`` that
refuses any batch carrying labels or targets (labels must never reach a label-free
method), keeps the dataset's normalization for the views it makes from ``batch.raw``, and
checks that the backbone gives pooled features before training.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..train.tasks import Batch, Task
from .augment import Normalizer, normalizer, to_unit

__all__ = [
    "ProjectionHead",
    "SSLTask",
    "check_method",
    "encode",
    "pooled_width",
    "ssl_methods",
]


def encode(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The backbone's pooled pre-logit features ``(B, num_features)``."""
    return model.forward_head(model.forward_features(x), pre_logits=True)


def pooled_width(model: nn.Module) -> int:
    width = getattr(model, "num_features", None)
    if not isinstance(width, int) or width < 1:
        raise ValueError(
            f"{type(model).__name__} declares no num_features; self-supervised methods need a "
            "registered archbench backbone"
        )
    return width


class ProjectionHead(nn.Module):
    """MLP ``in -> hidden -> ... -> out`` with BatchNorm and ReLU between layers.

    ``layers=2`` is SimCLR's head, ``layers=3`` SimCLR v2's deeper one; ``last_bn`` puts a
    BatchNorm (without affine) after the output layer as SimCLR v2's official code does.
    """

    def __init__(
        self, in_dim: int, hidden: int, out_dim: int, layers: int = 2, last_bn: bool = False
    ) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"a projection head needs at least 1 layer, got {layers}")
        mods: list[nn.Module] = []
        dim = in_dim
        for _ in range(layers - 1):
            mods += [nn.Linear(dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(True)]
            dim = hidden
        mods.append(nn.Linear(dim, out_dim, bias=not last_bn))
        if last_bn:
            mods.append(nn.BatchNorm1d(out_dim, affine=False))
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SSLTask(Task):
    """Base of the label-free methods: no labels, best checkpoint by lowest validation
    loss, views made from ``batch.raw`` and normalized as the engine normalizes."""

    uses_labels = False
    monitor = ("val_loss", "min")

    def __init__(self) -> None:
        super().__init__()
        self.norm: Normalizer | None = None

    def setup(self, model: nn.Module, data: Any, recipe: Any) -> None:
        self.norm = normalizer(data)

    def check(self, model: nn.Module, data: Any) -> None:
        super().check(model, data)
        for attr in ("forward_features", "forward_head"):
            if not callable(getattr(model, attr, None)):
                raise ValueError(
                    f"method {self.name!r} needs a backbone with {attr}; "
                    f"{type(model).__name__} has none (use a registered archbench model)"
                )
        pooled_width(model)

    def raw_images(self, batch: Batch) -> torch.Tensor:
        """The batch's images in [0, 1]; fails when labels reached this label-free task."""
        if batch.labels is not None or batch.targets is not None:
            raise RuntimeError(
                f"label-free method {self.name!r} received labels; the training loop must "
                "hide them from tasks with uses_labels = False"
            )
        if batch.raw is None:
            raise ValueError(f"method {self.name!r} needs the raw images (batch.raw)")
        return to_unit(batch.raw)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm is None:
            raise RuntimeError(f"method {self.name!r} was not set up (call setup first)")
        return self.norm(x)


def ssl_methods() -> dict[str, type]:
    """The registered label-free tasks of ``archbench.ssl``, by name."""
    import archbench.ssl  # noqa: F401  (registers the methods)
    from archbench.train.tasks import _TASKS

    return {
        name: cls
        for name, cls in sorted(_TASKS.items())
        if cls.__module__.startswith("archbench.ssl.") and not cls.uses_labels
    }


def check_method(name: str) -> None:
    """Fail unless ``name`` is a self-supervised method that trains without labels."""
    from archbench.train.tasks import _TASKS

    methods = ssl_methods()
    if name in methods:
        return
    cls = _TASKS.get(name)
    if cls is not None and cls.uses_labels:
        raise ValueError(
            f"method {name!r} needs labels and pretrain gives it none; run it with "
            f"`archbench train MODEL --task {name}`, or pick a label-free method: "
            f"{', '.join(methods)}"
        )
    raise ValueError(f"unknown --method {name!r}; self-supervised methods: {', '.join(methods)}")
