"""One evaluation protocol for every backbone: linear and k-NN probes on frozen features.

The features are the model's pooled pre-logits (``forward_head(..., pre_logits=True)``)
or, with ``layer=i``, the ``i``-th output of ``forward_intermediates`` averaged over
space (maps) or tokens (token models). Images are normalized with the dataset's mean/std,
unaugmented, in eval mode, without gradients.

Protocol (the one the self-supervised literature reports, with the hyper-parameters chosen
honestly):

1. features of the training split;
2. a stratified validation part (``val_fraction``, default 20%) is carved from them; every
   candidate hyper-parameter is fitted on the rest and scored on that part;
3. the best candidate is refitted on the whole training split;
4. only then are the evaluation split's features extracted, and scored once.

The linear probe is multinomial logistic regression on standardized features, fitted with
L-BFGS by scikit-learn; its candidate is the weight decay ``lambda`` of the objective
``mean cross-entropy + lambda / 2 * ||W||^2`` (scikit-learn's ``C = 1 / (lambda * n)``).
The k-NN probe is the weighted vote of Wu et al. (*Unsupervised Feature Learning via
Non-Parametric Instance Discrimination*, 2018), as DINO and solo-learn report it: cosine
similarity of L2-normalized features, the ``k`` nearest training samples vote for their
class with weight ``exp(similarity / T)`` (``T = 0.07``); its candidate is ``k``.

Fine-tuning is not here: it is ``fit`` (``archbench train``) of a model built with
``pretrained=`` a pretraining run's checkpoint, through the usual recipe.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..data.base import split_indices
from ..train.evaluate import model_device, normalized_batches

__all__ = [
    "DEFAULT_KS",
    "DEFAULT_WEIGHT_DECAYS",
    "choose_k",
    "choose_weight_decay",
    "extract_features",
    "fit_linear",
    "knn_predict",
    "probe",
]

DEFAULT_WEIGHT_DECAYS: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
DEFAULT_KS: tuple[int, ...] = (1, 5, 10, 20, 50, 100, 200)
KINDS = ("linear", "knn", "both")


def _pool(out: torch.Tensor) -> torch.Tensor:
    if out.ndim == 4:
        return out.mean(dim=(2, 3))
    if out.ndim == 3:
        return out.mean(dim=1)
    if out.ndim == 2:
        return out
    raise ValueError(f"cannot pool a feature tensor of shape {tuple(out.shape)}")


@torch.no_grad()
def extract_features(
    model: nn.Module,
    split: Any,
    batch_size: int = 256,
    layer: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen features ``(N, D)`` float32 on the CPU and labels ``(N,)`` of a split
    (an ``ImageTensorDataset`` carrying its bundle's mean/std)."""
    if not hasattr(model, "forward_features") or not hasattr(model, "forward_head"):
        raise TypeError(
            f"{type(model).__name__} has no forward_features/forward_head; probes need a "
            "registered archbench model"
        )
    dev = model_device(model)
    was_training = model.training
    model.eval()
    feats, labels = [], []
    try:
        for x, y, _ in normalized_batches(split, batch_size):
            x = x.to(dev)
            if layer is None:
                f = model.forward_head(model.forward_features(x), pre_logits=True)
            else:
                f = model.forward_intermediates(x, [layer])[0]
            feats.append(_pool(f).float().cpu())
            labels.append(y)
    finally:
        model.train(was_training)
    if not feats:
        raise ValueError("the split holds no samples to probe")
    f = torch.cat(feats)
    if not torch.isfinite(f).all():
        raise ValueError("the model's features hold NaN or inf; the encoder is broken")
    return f, torch.cat(labels)


# ----- linear probe ---------------------------------------------------------------------
def fit_linear(x: torch.Tensor, y: torch.Tensor, weight_decay: float, max_iter: int = 200) -> Any:
    """Standardize, then multinomial logistic regression (L-BFGS) with L2 ``weight_decay``
    on the mean loss. Returns a scikit-learn pipeline."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if weight_decay <= 0 or not math.isfinite(weight_decay):
        raise ValueError(f"linear probe weight decay must be a positive number, got {weight_decay}")
    n = len(y)
    clf = LogisticRegression(C=1.0 / (weight_decay * n), max_iter=max_iter, tol=1e-4)
    pipe = make_pipeline(StandardScaler(), clf)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipe.fit(x.numpy().astype(np.float64), y.numpy())
    return pipe


def _linear_acc(pipe: Any, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((pipe.predict(x.numpy().astype(np.float64)) == y.numpy()).mean())


def choose_weight_decay(
    x: torch.Tensor,
    y: torch.Tensor,
    fit_idx: torch.Tensor,
    val_idx: torch.Tensor,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
) -> tuple[float, dict[float, float]]:
    """Fit on ``fit_idx``, score on ``val_idx`` (both index the training features); the
    best weight decay (ties: the larger, the simpler model) and every candidate's score."""
    scores = {}
    for wd in weight_decays:
        scores[float(wd)] = _linear_acc(
            fit_linear(x[fit_idx], y[fit_idx], wd), x[val_idx], y[val_idx]
        )
    best = max(scores, key=lambda w: (scores[w], w))
    return best, scores


# ----- k-NN probe -----------------------------------------------------------------------
def knn_predict(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    query: torch.Tensor,
    k: int,
    num_classes: int,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> torch.Tensor:
    """Class scores ``(Q, num_classes)`` of the weighted k-NN vote: cosine similarity,
    weight ``exp(sim / T)`` per neighbour."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, len(bank))
    bank = nn.functional.normalize(bank.float(), dim=1)
    out = []
    for i in range(0, len(query), chunk):
        q = nn.functional.normalize(query[i : i + chunk].float(), dim=1)
        sim, idx = (q @ bank.T).topk(k, dim=1)
        w = torch.exp(sim / temperature)
        votes = torch.zeros(len(q), num_classes)
        votes.scatter_add_(1, bank_labels[idx], w)
        out.append(votes)
    return torch.cat(out)


def _knn_acc(bank, bank_y, q, q_y, k, num_classes, temperature) -> float:
    scores = knn_predict(bank, bank_y, q, k, num_classes, temperature)
    return float((scores.argmax(1) == q_y).float().mean())


def choose_k(
    x: torch.Tensor,
    y: torch.Tensor,
    fit_idx: torch.Tensor,
    val_idx: torch.Tensor,
    num_classes: int,
    ks: Sequence[int] = DEFAULT_KS,
    temperature: float = 0.07,
) -> tuple[int, dict[int, float]]:
    """Best ``k`` on the carved validation part (ties: the smaller) and every score."""
    scores = {}
    for k in ks:
        if k > len(fit_idx) and scores:
            continue
        acc = _knn_acc(x[fit_idx], y[fit_idx], x[val_idx], y[val_idx], k, num_classes, temperature)
        scores[int(k)] = acc
    best = max(scores, key=lambda k: (scores[k], -k))
    return best, scores


# ----- the protocol ---------------------------------------------------------------------
def probe(
    model: nn.Module,
    data: Any,
    *,
    kind: str = "both",
    split: str = "test",
    layer: int | None = None,
    val_fraction: float = 0.2,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    ks: Sequence[int] = DEFAULT_KS,
    temperature: float = 0.07,
    seed: int = 0,
    batch_size: int = 256,
    per_sample: bool = False,
) -> dict[str, Any]:
    """Linear and/or k-NN probe of ``model``'s frozen features on a ``DataBundle``.

    Hyper-parameters are chosen on a part of ``data.train`` (see the module docstring);
    ``split`` (``test`` or ``val``) is read once, after the choice. Accuracies are
    fractions in [0, 1]. ``per_sample`` adds each probe's per-image hits (``correct``, a
    bool array) for paired statistics."""
    if kind not in KINDS:
        raise ValueError(f"probe kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if split not in ("test", "val"):
        raise ValueError(f"probe split must be 'test' or 'val', got {split!r}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if not weight_decays or not ks:
        raise ValueError("give at least one weight decay and one k to choose from")
    if temperature <= 0:
        raise ValueError(f"k-NN temperature must be > 0, got {temperature}")
    num_classes = int(data.num_classes)
    x, y = extract_features(model, data.train, batch_size, layer)
    fit_idx, val_idx = split_indices(y, [val_fraction], seed)
    if len(val_idx) == 0 or len(fit_idx) == 0:
        raise ValueError(
            f"the training split ({len(y)} samples) is too small to carve a validation part"
        )
    result: dict[str, Any] = {
        "split": split,
        "layer": layer,
        "feature_dim": int(x.shape[1]),
        "n_train": len(y),
        "n_select_fit": len(fit_idx),
        "n_select_val": len(val_idx),
        "val_fraction": val_fraction,
        "seed": seed,
    }
    chosen: dict[str, Any] = {}
    if kind in ("linear", "both"):
        wd, scores = choose_weight_decay(x, y, fit_idx, val_idx, weight_decays)
        chosen["linear"] = fit_linear(x, y, wd)
        result["linear"] = {
            "weight_decay": wd,
            "select_acc": scores[wd],
            "candidates": {str(k): v for k, v in scores.items()},
        }
    if kind in ("knn", "both"):
        k, scores = choose_k(x, y, fit_idx, val_idx, num_classes, ks, temperature)
        chosen["knn"] = k
        result["knn"] = {
            "k": k,
            "temperature": temperature,
            "select_acc": scores[k],
            "candidates": {str(kk): v for kk, v in scores.items()},
        }
    # every choice is made: now, and only now, the evaluation split is read
    ex, ey = extract_features(model, data.split(split), batch_size, layer)
    result["n_eval"] = len(ey)
    if "linear" in chosen:
        hits = chosen["linear"].predict(ex.numpy().astype(np.float64)) == ey.numpy()
        result["linear"]["acc"] = float(hits.mean())
        if per_sample:
            result["linear"]["correct"] = hits
    if "knn" in chosen:
        scores = knn_predict(x, y, ex, chosen["knn"], num_classes, temperature)
        hits = (scores.argmax(1) == ey).numpy()
        result["knn"]["acc"] = float(hits.mean())
        if per_sample:
            result["knn"]["correct"] = hits
    return result
