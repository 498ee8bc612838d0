"""Deletion and insertion curves (Petsiuk et al., RISE) for comparing explanation methods.

Deletion removes pixels from most to least salient (replacing them with a baseline) and
tracks the target's probability: a faithful map makes it fall fast (low area under the
curve). Insertion starts from the baseline and restores pixels from most to least
salient: a faithful map makes the probability rise fast (high area). All steps of all
images run in batches.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["blur_baseline", "deletion_insertion", "faithfulness_table"]


def blur_baseline(images: torch.Tensor, kernel: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """A heavily blurred copy of the images (the insertion start and deletion fill)."""
    k = min(kernel, 2 * (min(images.shape[-2:]) // 2) - 1)
    k = max(k, 1)
    ax = torch.arange(k, dtype=images.dtype, device=images.device) - (k - 1) / 2
    g = torch.exp(-(ax**2) / (2 * sigma**2))
    g = g / g.sum()
    c = images.shape[1]
    x = F.pad(images, (k // 2,) * 4, mode="replicate")
    x = F.conv2d(x, g.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    return F.conv2d(x, g.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)


def _probs(
    model: nn.Module, x: torch.Tensor, targets: torch.Tensor, batch_size: int
) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            logits = model(x[i : i + batch_size])
            if isinstance(logits, (tuple, list)):
                logits = logits[0]
            out.append(
                logits.float().softmax(-1).gather(1, targets[i : i + batch_size, None]).squeeze(1)
            )
    return torch.cat(out)


def deletion_insertion(
    model: nn.Module,
    images: torch.Tensor,
    saliency: torch.Tensor,
    targets: torch.Tensor | None = None,
    steps: int = 16,
    baseline: torch.Tensor | None = None,
    batch_size: int = 128,
) -> dict[str, torch.Tensor]:
    """Curves (B, steps + 1) and their areas (B,) for deletion and insertion.

    ``saliency``: (B, H, W) maps at the images' resolution; ``targets`` default to the
    predicted classes. Area is the trapezoid rule over the fraction of pixels changed.
    """
    if saliency.shape != (images.shape[0], *images.shape[-2:]):
        raise ValueError(
            f"saliency must be (B, H, W) = {(images.shape[0], *images.shape[-2:])}, got {tuple(saliency.shape)}"
        )
    was_training = model.training
    model.eval()
    b, _, h, w = images.shape
    if targets is None:
        with torch.no_grad():
            logits = model(images)
            logits = logits[0] if isinstance(logits, (tuple, list)) else logits
        targets = logits.argmax(1)
    base = blur_baseline(images) if baseline is None else baseline
    order = saliency.reshape(b, -1).argsort(dim=1, descending=True)  # most salient first
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(h * w, device=order.device).expand(b, -1))
    fractions = torch.linspace(0, 1, steps + 1)
    counts = (fractions * h * w).round().long()
    # mask[s, b, pixel] = pixel is among the first counts[s] most salient of image b
    mask = (rank.unsqueeze(0) < counts.view(-1, 1, 1).to(rank.device)).view(steps + 1, b, 1, h, w)
    mask = mask.to(images.dtype)
    deleted = images.unsqueeze(0) * (1 - mask) + base.unsqueeze(0) * mask
    inserted = base.unsqueeze(0) * (1 - mask) + images.unsqueeze(0) * mask
    tgt = targets.repeat(steps + 1)
    del_curve = (
        _probs(model, deleted.reshape(-1, *images.shape[1:]), tgt, batch_size).view(steps + 1, b).T
    )
    ins_curve = (
        _probs(model, inserted.reshape(-1, *images.shape[1:]), tgt, batch_size).view(steps + 1, b).T
    )
    model.train(was_training)
    return {
        "fractions": fractions,
        "deletion": del_curve,
        "insertion": ins_curve,
        "deletion_auc": torch.trapezoid(del_curve, fractions, dim=1),
        "insertion_auc": torch.trapezoid(ins_curve, fractions, dim=1),
    }


def faithfulness_table(
    model: nn.Module,
    images: torch.Tensor,
    methods: list[str],
    targets: torch.Tensor | None = None,
    steps: int = 16,
) -> list[dict[str, float]]:
    """Mean deletion / insertion areas per method on the same images (lower / higher is better)."""
    from .cam import explain

    rows = []
    for method in methods:
        maps = explain(model, images, targets=targets, method=method)
        res = deletion_insertion(model, images, maps, targets=targets, steps=steps)
        rows.append(
            {
                "method": method,
                "deletion_auc": float(res["deletion_auc"].mean()),
                "insertion_auc": float(res["insertion_auc"].mean()),
                "insertion_minus_deletion": float(
                    (res["insertion_auc"] - res["deletion_auc"]).mean()
                ),
                "images": int(images.shape[0]),
            }
        )
    # a random map is the reference every method should beat
    g = torch.Generator().manual_seed(0)
    rand = torch.rand(images.shape[0], *images.shape[-2:], generator=g)
    res = deletion_insertion(model, images, rand, targets=targets, steps=steps)
    rows.append(
        {
            "method": "random (reference)",
            "deletion_auc": float(res["deletion_auc"].mean()),
            "insertion_auc": float(res["insertion_auc"].mean()),
            "insertion_minus_deletion": float((res["insertion_auc"] - res["deletion_auc"]).mean()),
            "images": int(images.shape[0]),
        }
    )
    return rows
