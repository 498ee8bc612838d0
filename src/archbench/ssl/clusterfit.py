"""ClusterFit: *ClusterFit: Improving Generalization of Visual Representations* (Yan,
Misra, Gupta, Ghadiyaram and Mahajan, CVPR 2020).

Two stages. (1) Cluster: a pretrained network (any pretext or weakly supervised model)
embeds every training image; k-means with ``clusters`` centres on the L2-normalized
embeddings gives each image a pseudo-label. (2) Fit: a network trained from scratch
classifies the images into their pseudo-labels with a linear classifier on its pooled
features and the cross-entropy loss; its features are the representation.

:func:`cluster_pseudo_labels` is stage 1 as a function. The ``clusterfit`` task runs it in
``setup`` and then trains on the pseudo-labels. The pretrained network is ``pretrained``
(a run folder or checkpoint of any registered model, read as distillation teachers are);
left empty, the model as given to ``fit`` is the pretrained network: it is copied
(frozen) as the extractor and the model itself is re-initialized (``reset_parameters`` of
each layer), so stage 2 starts from scratch as the paper's does. Validation images get
the label of their nearest centre, and ``val_top1`` is the agreement with it.

k-means is ``scipy.cluster.vq.kmeans2`` (k-means++ initialization, seeded from the recipe).
The paper's best setting on ImageNet-1k used 16000 clusters; the default here (32)
suits the small embedded datasets.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.cluster.vq import kmeans2

from ..train import register_task
from ..train.evaluate import model_device, normalized_batches
from ._pretext import pooled_features
from .base import SSLTask

__all__ = ["ClusterFit", "cluster_pseudo_labels", "embed_split", "reinitialize"]


@torch.no_grad()
def embed_split(
    extractor: nn.Module, split: Any, batch_size: int = 256, convert: Any = None
) -> torch.Tensor:
    """(N, F) L2-normalized pooled features of every image of a split, in order."""
    dev = model_device(extractor)
    was = extractor.training
    extractor.eval()
    out = []
    try:
        for x, _y, _i in normalized_batches(split, batch_size):
            x = x.to(dev)
            if convert is not None:
                x = convert(x)
            out.append(F.normalize(pooled_features(extractor, x).float(), dim=1).cpu())
    finally:
        extractor.train(was)
    return torch.cat(out)


def cluster_pseudo_labels(
    features: torch.Tensor, clusters: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means on ``features`` (N, F): ``(labels (N,), centres (clusters, F))``."""
    if features.ndim != 2 or not torch.isfinite(features).all():
        raise ValueError("cluster_pseudo_labels expects finite (N, F) features")
    if not 2 <= clusters <= features.shape[0]:
        raise ValueError(
            f"clusterfit: clusters must be between 2 and the number of images "
            f"({features.shape[0]}), got {clusters}"
        )
    data = features.double().numpy()
    centres, labels = kmeans2(data, clusters, minit="++", seed=np.random.default_rng(seed))
    return torch.from_numpy(labels.astype(np.int64)), torch.from_numpy(centres).float()


def reinitialize(model: nn.Module) -> int:
    """Call ``reset_parameters`` on every submodule that has one; the number reset."""
    count = 0
    for m in model.modules():
        reset = getattr(m, "reset_parameters", None)
        if m is not model and callable(reset):
            reset()
            count += 1
    return count


@register_task("clusterfit")
class ClusterFit(SSLTask):
    """Classify k-means pseudo-labels of a pretrained network's features."""

    views = 1
    monitor = ("val_top1", "max")

    def __init__(self, clusters: int = 32, pretrained: str = "") -> None:
        super().__init__()
        if clusters < 2:
            raise ValueError(f"clusterfit: clusters must be >= 2, got {clusters}")
        self.clusters = clusters
        self.pretrained = pretrained
        self.pseudo = torch.zeros(0, dtype=torch.long)
        self.val_pseudo = torch.zeros(0, dtype=torch.long)

    def setup(self, model: nn.Module, data: Any, recipe: Any) -> None:
        super().setup(model, data, recipe)
        convert = None
        if self.pretrained:
            from ..distill.teacher import load_teacher, teacher_input_for

            extractor, info = load_teacher(self.pretrained)
            convert = teacher_input_for(info, data)
        else:
            extractor = copy.deepcopy(model)
            if reinitialize(model) == 0:
                raise ValueError(
                    "clusterfit: the model has no layer with reset_parameters to start "
                    "from scratch; give pretrained=RUN_DIR and a freshly built model"
                )
        dev = model_device(model)
        extractor.to(dev)
        if convert is not None:
            convert.to(dev)
        feats = embed_split(extractor, data.train, recipe.eval_batch_size, convert)
        self.pseudo, centres = cluster_pseudo_labels(feats, self.clusters, int(recipe.seed))
        val = embed_split(extractor, data.val, recipe.eval_batch_size, convert)
        self.val_pseudo = (val @ F.normalize(centres, dim=1).T).argmax(dim=1)
        self.trainable["classifier"] = nn.Linear(model.num_features, self.clusters)

    def to(self, device: torch.device) -> ClusterFit:
        super().to(device)
        self.pseudo = self.pseudo.to(device)
        self.val_pseudo = self.val_pseudo.to(device)
        return self

    def step(self, batch: Any, state: Any) -> dict[str, Any]:
        logits = self.trainable["classifier"](pooled_features(state.model, batch.images))
        target = self.pseudo[batch.index]
        loss = F.cross_entropy(logits.float(), target)
        return {"loss": loss, "acc": (logits.detach().argmax(-1) == target).float().mean()}

    def eval_step(self, batch: Any, state: Any) -> dict[str, float]:
        logits = self.trainable["classifier"](pooled_features(state.model, batch.images))
        target = self.val_pseudo[batch.index]
        return {
            "loss": float(F.cross_entropy(logits.float(), target)),
            "top1": float((logits.argmax(-1) == target).float().mean()),
        }

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**super().state_dict(), "pseudo": self.pseudo, "val_pseudo": self.val_pseudo}

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        super().load_state_dict(sd)
        self.pseudo = sd["pseudo"].to(self.pseudo.device)
        self.val_pseudo = sd["val_pseudo"].to(self.val_pseudo.device)
