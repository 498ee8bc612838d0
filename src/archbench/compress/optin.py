"""OPTIN: one-shot pruning of a trained ViT's heads and MLP neurons, with no retraining.

*The Need for Speed: Pruning Transformers with One Recipe* (Khaki and Plataniotis,
ICLR 2024). Each prunable unit (an attention head, an MLP hidden neuron) is scored by its
*trajectory*: the unit is masked and the distortion it causes is measured on every later
layer's output, so long-range effects count. Following the official release
(``prune/head_pruning.py``, ``loss_components.py``, ``configs/language/mnli_bert.yaml``):

- the layer distortion is manifold distillation: tokens L2-normalized, K = 768 tokens
  sampled over batch x tokens, ``sum((F_t F_t^T - F_s F_s^T)^2)`` of their Gram matrices;
- the importance of a unit in block ``l`` is the sum of that distortion over the blocks
  after ``l`` (the last block also counts its own output), plus the logit term
  ``T^2 * KL(p_teacher || p_masked)`` (sum over the batch, T = 4) rescaled by a power of
  ten so that it sits ``lambda_contribution`` (10) orders below the layer term;
- units of the last block are down-weighted by 0.5 (``*_fin_decay_val``);
- the selection takes the heads in order of importance and, for each count of heads,
  fills the rest of the MAC budget (``mac_constraint`` of the heads' and neurons' MACs)
  with neurons in order of importance, keeping the count with the largest total
  importance (``globalRankingLanguage``).

The chosen heads and neurons are then removed physically: ``qkv``/``proj`` and
``fc1``/``fc2`` are sliced, so the model is smaller and faster; a block that loses every
head or neuron keeps only that branch's output bias, exactly what the masked model computed.
Deviation: the token sample of the manifold term is drawn once per layer (the official
code redraws it for every candidate), so every candidate is compared on the same tokens
and the result is deterministic. ``neuron_group`` > 1 scores neurons in consecutive
groups, trading fidelity for time on wide models (the paper scores single neurons).
Applies to the plain-ViT-style models that token pruning accepts.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import TransformerBlock
from ._common import check_fraction, snapshot_batches
from .registry import CompressContext, CompressResult, register_compressor
from .token_prune import check_plain_vit

__all__ = [
    "BiasOnly",
    "apply_unit_masks",
    "manifold_distortion",
    "optin_importance",
    "optin_select",
    "prune_units",
]


def manifold_distortion(
    teacher: torch.Tensor, student: torch.Tensor, sample: torch.Tensor | None
) -> torch.Tensor:
    """OPTIN's manifold term of (G, B, N, C) features: one value per candidate G.

    Tokens are L2-normalized; ``sample`` indexes the B*N tokens that form the Gram matrices.
    """
    t = F.normalize(teacher, dim=-1).flatten(-3, -2)
    s = F.normalize(student, dim=-1).flatten(-3, -2)
    if sample is not None:
        t, s = t[..., sample, :], s[..., sample, :]
    diff = t @ t.transpose(-1, -2) - s @ s.transpose(-1, -2)
    return (diff * diff).sum(dim=(-1, -2))


def _kl_sum(teacher_logits: torch.Tensor, logits: torch.Tensor, temp: float) -> torch.Tensor:
    """``T^2 * sum_batch KL(softmax(teacher) || softmax(student))`` per candidate (G, B, K)."""
    lt = F.log_softmax(teacher_logits.float(), dim=-1)
    ls = F.log_softmax(logits.float(), dim=-1)
    return (lt.exp() * (lt - ls)).sum(dim=(-1, -2)).clamp(min=0) * temp * temp


def _rescale_kl(md: torch.Tensor, kl: torch.Tensor, lam: float) -> torch.Tensor:
    """The official power-of-ten rescaling: KL ends about ``lam`` times below the layer term."""
    out = kl.clone()
    ok = (md > 0) & (kl > 0)
    ratio = torch.log10(md[ok]) - torch.log10(kl[ok]) - math.log10(lam)
    out[ok] = kl[ok] * torch.pow(10.0, torch.trunc(ratio))
    if (~ok).any():
        mean_scale = (out[ok] / kl[ok]).mean() if ok.any() else torch.tensor(1.0)
        out[~ok] = kl[~ok] * mean_scale
    return out


class _Masks:
    """Forward pre-hooks that zero heads (input of ``attn.proj``) and neurons (of ``mlp.fc2``)
    per sample: a (G*B, units) 0/1 tensor per block, or None for none."""

    def __init__(self, blocks: list[nn.Module]) -> None:
        self.head: dict[int, torch.Tensor] = {}
        self.neuron: dict[int, torch.Tensor] = {}
        self.handles = []
        for i, blk in enumerate(blocks):
            self.handles.append(blk.attn.proj.register_forward_pre_hook(self._hook(i, "head", blk)))
            self.handles.append(blk.mlp.fc2.register_forward_pre_hook(self._hook(i, "neuron", blk)))

    def _hook(self, i: int, kind: str, blk: nn.Module):
        def fn(module: nn.Module, args: tuple) -> tuple | None:
            table = self.head if kind == "head" else self.neuron
            mask = table.get(i)
            if mask is None:
                return None
            (x,) = args
            if kind == "head":
                m = mask.repeat_interleave(blk.attn.head_dim, dim=1)
            else:
                m = mask
            return (x * m.view(m.shape[0], *([1] * (x.ndim - 2)), m.shape[1]).to(x.dtype),)

        return fn

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _run_from(
    model: nn.Module, blocks: list[nn.Module], start: int, x: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    feats = []
    for blk in blocks[start:]:
        x = blk(x)
        feats.append(x)
    return model.forward_head(model.norm(x)), feats


@torch.no_grad()
def optin_importance(
    model: nn.Module,
    images: torch.Tensor,
    *,
    temp: float = 4.0,
    lambda_contribution: float = 10.0,
    final_decay: float = 0.5,
    num_tokens: int = 768,
    neuron_group: int = 1,
    candidates_per_pass: int = 64,
    seed: int = 0,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Trajectory importance of every head and neuron (group): two lists, one tensor a block.

    Larger means more important (the official scores are the negatives of these).
    """
    blocks = list(check_plain_vit(model))
    model.eval()
    depth = len(blocks)
    inputs: list[torch.Tensor] = []
    hooks = [b.register_forward_pre_hook(lambda m, a: inputs.append(a[0])) for b in blocks]
    try:
        base_logits = model(images)
    finally:
        for h in hooks:
            h.remove()
    _, base_feats = _run_from(model, blocks, 0, inputs[0])
    b, n, _ = base_feats[0].shape
    g = torch.Generator().manual_seed(seed)
    sample = torch.randperm(b * n, generator=g)[:num_tokens] if b * n > num_tokens else None
    masks = _Masks(blocks)
    heads_out, neurons_out = [], []
    try:
        for layer, blk in enumerate(blocks):
            for kind in ("head", "neuron"):
                if kind == "head":
                    units = blk.attn.num_heads
                    groups = [[u] for u in range(units)]
                else:
                    units = blk.mlp.fc1.out_features
                    groups = [
                        list(range(s, min(s + neuron_group, units)))
                        for s in range(0, units, neuron_group)
                    ]
                scores = []
                for c0 in range(0, len(groups), candidates_per_pass):
                    chunk = groups[c0 : c0 + candidates_per_pass]
                    gsz = len(chunk)
                    mask = torch.ones(gsz, units, device=images.device)
                    for j, grp in enumerate(chunk):
                        mask[j, grp] = 0.0
                    table = masks.head if kind == "head" else masks.neuron
                    table[layer] = mask.repeat_interleave(b, dim=0)
                    x0 = inputs[layer].repeat(gsz, 1, 1)
                    logits, feats = _run_from(model, blocks, layer, x0)
                    table.pop(layer)
                    md = torch.zeros(gsz, device=images.device)
                    for j_off, f in enumerate(feats):
                        j = layer + j_off
                        if j > layer or (j == depth - 1 == layer):
                            t = base_feats[j].unsqueeze(0).expand(gsz, -1, -1, -1)
                            md += manifold_distortion(t, f.view(gsz, b, n, -1), sample)
                    kl = _kl_sum(
                        base_logits.unsqueeze(0).expand(gsz, -1, -1), logits.view(gsz, b, -1), temp
                    )
                    score = md + _rescale_kl(md, kl, lambda_contribution)
                    if layer == depth - 1:
                        score = score * final_decay
                    scores.append(score)
                scores = torch.cat(scores)
                if kind == "neuron" and neuron_group > 1:
                    scores = scores.repeat_interleave(neuron_group)[:units] / neuron_group
                (heads_out if kind == "head" else neurons_out).append(scores.cpu())
    finally:
        masks.remove()
    return heads_out, neurons_out


def _macs(blk: nn.Module, tokens: int) -> tuple[float, float]:
    """MACs of one head and of one MLP neuron of ``blk`` at ``tokens`` tokens."""
    dim, dh = blk.norm1.normalized_shape[0], blk.attn.head_dim
    head = 4 * tokens * dim * dh + 2 * tokens * tokens * dh  # q, k, v, proj; QK^T and AV
    neuron = 2 * tokens * dim  # fc1 row and fc2 column
    return float(head), float(neuron)


def optin_select(
    head_scores: list[torch.Tensor],
    neuron_scores: list[torch.Tensor],
    head_macs: list[float],
    neuron_macs: list[float],
    mac_constraint: float,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Keep masks (bool, one a block) under ``mac_constraint`` x the units' total MACs.

    For each number h of best heads, neurons are added best first while they fit; the h
    with the largest total importance wins (the official global ranking).
    """
    heads = sorted(
        ((float(s), l, i) for l, t in enumerate(head_scores) for i, s in enumerate(t)),
        key=lambda r: -r[0],
    )
    neurons = sorted(
        ((float(s), l, i) for l, t in enumerate(neuron_scores) for i, s in enumerate(t)),
        key=lambda r: -r[0],
    )
    total = sum(head_macs[l] * len(t) for l, t in enumerate(head_scores)) + sum(
        neuron_macs[l] * len(t) for l, t in enumerate(neuron_scores)
    )
    capacity = mac_constraint * total
    best = (-math.inf, 0, 0)
    head_cost = head_imp = 0.0
    for h in range(0, len(heads) + 1):
        if h:
            head_cost += head_macs[heads[h - 1][1]]
            head_imp += heads[h - 1][0]
        if head_cost > capacity:
            break
        remaining, imp, k = capacity - head_cost, head_imp, 0
        while k < len(neurons) and neuron_macs[neurons[k][1]] <= remaining:
            remaining -= neuron_macs[neurons[k][1]]
            imp += neurons[k][0]
            k += 1
        if imp > best[0]:
            best = (imp, h, k)
    _, nh, nn_ = best
    head_keep = [torch.zeros(len(t), dtype=torch.bool) for t in head_scores]
    neuron_keep = [torch.zeros(len(t), dtype=torch.bool) for t in neuron_scores]
    for _, l, i in heads[:nh]:
        head_keep[l][i] = True
    for _, l, i in neurons[:nn_]:
        neuron_keep[l][i] = True
    return head_keep, neuron_keep


class BiasOnly(nn.Module):
    """A branch whose every unit was pruned: it outputs its output layer's bias (or zero)."""

    def __init__(self, dim: int, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.bias = nn.Parameter(bias.detach().clone() if bias is not None else torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x) + self.bias  # a fresh tensor (an expanded view of a leaf
        # confuses autograd's module hooks, e.g. the FLOP counter's)


def _slice_linear(
    lin: nn.Linear, rows: torch.Tensor | None, cols: torch.Tensor | None
) -> nn.Linear:
    w = lin.weight.detach()
    if rows is not None:
        w = w[rows]
    if cols is not None:
        w = w[:, cols]
    new = nn.Linear(w.shape[1], w.shape[0], bias=lin.bias is not None).to(w.device, w.dtype)
    new.weight.data.copy_(w)
    if lin.bias is not None:
        b = lin.bias.detach()
        new.bias.data.copy_(b[rows] if rows is not None else b)
    return new


@torch.no_grad()
def prune_units(
    model: nn.Module, head_keep: list[torch.Tensor], neuron_keep: list[torch.Tensor]
) -> nn.Module:
    """Remove the heads and neurons whose keep mask is False (in place; returns ``model``)."""
    blocks = check_plain_vit(model)
    for blk, hk, nk in zip(blocks, head_keep, neuron_keep, strict=True):
        attn, mlp = blk.attn, blk.mlp
        dim = blk.norm1.normalized_shape[0]
        if not hk.any():
            blk.attn = BiasOnly(dim, attn.proj.bias)
        elif not hk.all():
            heads = hk.nonzero().flatten()
            dh, h = attn.head_dim, attn.num_heads
            ch = (heads.view(-1, 1) * dh + torch.arange(dh)).flatten()
            qkv_rows = torch.cat([ch + part * h * dh for part in range(3)])
            attn.qkv = _slice_linear(attn.qkv, qkv_rows, None)
            attn.proj = _slice_linear(attn.proj, None, ch)
            attn.num_heads = int(heads.numel())
        if not nk.any():
            blk.mlp = BiasOnly(dim, mlp.fc2.bias)
        elif not nk.all():
            idx = nk.nonzero().flatten()
            mlp.fc1 = _slice_linear(mlp.fc1, idx, None)
            mlp.fc2 = _slice_linear(mlp.fc2, None, idx)
    return model


@torch.no_grad()
def apply_unit_masks(
    model: nn.Module,
    head_keep: list[torch.Tensor],
    neuron_keep: list[torch.Tensor],
    x: torch.Tensor,
) -> torch.Tensor:
    """The logits of ``model`` with the units masked (not removed): the reference of pruning."""
    blocks = list(check_plain_vit(model))
    masks = _Masks(blocks)
    try:
        for i, (hk, nk) in enumerate(zip(head_keep, neuron_keep, strict=True)):
            masks.head[i] = hk.float().view(1, -1).expand(x.shape[0], -1)
            masks.neuron[i] = nk.float().view(1, -1).expand(x.shape[0], -1)
        return model(x)
    finally:
        masks.remove()


def _check_args(
    mac_constraint: Any = 0.6, neuron_group: Any = 1, calibration_images: Any = 64, **_: Any
) -> None:
    check_fraction("mac_constraint", mac_constraint)
    if int(neuron_group) < 1 or int(calibration_images) < 1:
        raise ValueError("neuron_group and calibration_images must be >= 1")


def _replay(model: nn.Module, info: dict[str, Any]) -> None:
    """The pruned shapes on a fresh model: keep the recorded number of heads and neurons
    per block (which ones does not matter; the saved weights are loaded afterwards)."""
    blocks = check_plain_vit(model)
    heads = [torch.arange(b.attn.num_heads) < k for b, k in zip(blocks, info["heads_kept"])]
    neurons = [
        torch.arange(b.mlp.fc1.out_features) < k for b, k in zip(blocks, info["neurons_kept"])
    ]
    prune_units(model, heads, neurons)


@register_compressor("optin", check=_check_args, replay=_replay)
def optin(
    model: nn.Module,
    ctx: CompressContext,
    mac_constraint: float = 0.6,
    calibration_images: int = 64,
    temp: float = 4.0,
    lambda_contribution: float = 10.0,
    neuron_group: int = 1,
) -> CompressResult:
    """OPTIN one-shot pruning to ``mac_constraint`` of the heads' and neurons' MACs."""
    mac_constraint = check_fraction("mac_constraint", mac_constraint)
    if int(neuron_group) < 1:
        raise ValueError(f"neuron_group must be >= 1, got {neuron_group}")
    blocks = check_plain_vit(model)
    if not all(isinstance(b, TransformerBlock) and hasattr(b.attn, "qkv") for b in blocks):
        raise ValueError(
            "OPTIN needs the model's original transformer blocks; run it before token pruning "
            "or any other change to the blocks"
        )
    batches = snapshot_batches(ctx, max(1, math.ceil(calibration_images / 8)))
    images = torch.cat(batches)[: int(calibration_images)]
    model.eval()
    heads, neurons = optin_importance(
        model,
        images,
        temp=temp,
        lambda_contribution=lambda_contribution,
        neuron_group=int(neuron_group),
    )
    seen: list[int] = []
    hook = blocks[0].register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1]))
    with torch.no_grad():
        model(images[:1])
    hook.remove()
    costs = [_macs(b, seen[0]) for b in blocks]
    head_keep, neuron_keep = optin_select(
        heads, neurons, [c[0] for c in costs], [c[1] for c in costs], mac_constraint
    )
    prune_units(model, head_keep, neuron_keep)
    info = {
        "mac_constraint": mac_constraint,
        "heads_kept": [int(k.sum()) for k in head_keep],
        "neurons_kept": [int(k.sum()) for k in neuron_keep],
        "calibration_images": int(images.shape[0]),
    }
    return CompressResult(model, info=info)
