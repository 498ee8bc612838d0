"""Cross-architecture distillation: *Cross-Architecture Knowledge Distillation* (Liu, Cao,
Li, Hu, Ding and Li, ACCV 2022).

The student's feature map is not made to mimic the teacher's directly; two projectors
carry it into the teacher's spaces (the paper's equations 1-6):

- **Partially cross attention (PCA) projector**: three 3x3 convolutions give the
  student's queries, keys and values ``Q_S, K_S, V_S``; ::

      Attn = softmax(Q K^T / sqrt(d)) V
      PCAttn_S = softmax(g(Q_S) g(K_S)^T / sqrt(d)) g(V_S)
      g(M_S)[i, j] = M_T[i, j] with probability p (1/2), else M_S[i, j]   (training only)
      L_proj1 = ||Attn_T - PCAttn_S||^2 + ||V_T V_T^T / sqrt(d) - V_S V_S^T / sqrt(d)||^2

- **Group-wise linear (GL) projector**: one fully connected layer per spatial group of
  ``group`` x ``group`` positions (the paper's 4x4 neighbourhoods: 16 layers for a 14x14
  grid) maps the student's feature at each position to the teacher's width, with
  dropout: ``L_proj2 = ||h_T - h'_S||^2``.
- **Multi-view robust training** (equations 7-9): with probability 1/2 each student
  image is replaced by a transformed view (a random resized crop or a patch mask, the
  teacher keeps the original); a three-layer discriminator learns to tell the teacher's
  features ``h_T`` (real) from the projected student features ``h'_S`` (fake), ``L_MAD``,
  and the student learns to fool it, ``L_MVG``.

The student's loss, with the paper's equation 10 weighted term by term::

    CE + weight * (attn_weight * ||Attn_T - PCAttn_S||^2 + value_weight * ||VV_T - VV_S||^2
                   + feat_weight * L_proj2 + adv_weight * L_MVG) + L_MAD

The defaults are the official code's weights (0.2 and 0.05 on the two PCA terms, 0.05 on
the GL term, 1 on the adversarial term, all times 0.2, where its warm-up of the
distillation weight ends); all ones give equation 10 as printed, which lets the value
term (of order sqrt(d)^2) swamp the labels. ``CE`` is the label term the student keeps.
The discriminator's ``L_MAD`` is added to the same loss but reaches only the
discriminator's weights, and the student's adversarial term only the student (the
discriminator is evaluated with detached weights there), so one optimizer step does the
paper's alternating update. Squared norms are means over elements, as the official
code's ``MSELoss``; ``val_distill`` logs the weighted projector terms (without ``weight``).
The projectors are initialized from the recipe's seed, whatever the caller's random state.

Feature spaces, for any pair of families: the teacher's features are its
``forward_intermediates`` output at ``teacher_layer`` (the last by default; tokens are
folded into their grid), the student's at ``student_layer`` (by default its deepest stage
whose grid is at least the teacher's, as the paper pairs ResNet's stage 3 with ViT's
14x14 tokens). Both maps are average-pooled to the coarser of the two grids.

Deviations, and why: the paper reads ``Q_T, K_T, V_T`` inside the transformer teacher's
last attention; archbench reaches a model only through its stage outputs, and a CNN
teacher has no attention, so the teacher's attention is built from its feature map:
``Q_T = K_T = V_T = LayerNorm(h_T)`` (no affine), split into ``heads`` heads (default:
64 channels per head when the width allows, else one). Mean squared errors are on
``Attn`` as the paper writes it (the official code compares the pre-softmax scores
``Q K^T / sqrt(d)`` under those weights instead). The discriminator works on each
position's feature vector (three linear layers, hidden width ``disc_hidden``, LeakyReLU
0.2; the paper gives no widths), with the official code's non-saturating generator loss
``-log D(h'_S)`` for the paper's ``log(1 - D(h'_S))``, and shares the run's optimizer and
learning rate (the official code gives it a separate one at 1/100 of the rate). The GL
dropout rate (0.1) is ours; the paper gives none. The official code's warm-up of the
distillation weight (0 for 25 of 120 epochs, then a ramp to 0.2; only the 0.2 is kept)
and its extra logit and class-token terms are left out. The paper distils Transformer -> CNN; nothing here depends on the
direction, and CNN -> ViT works the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.transforms import cutout, random_resized_crop
from ..train import ClassificationTask, register_task, soft_cross_entropy
from .teacher import DistillationTask

__all__ = [
    "CrossArchitectureDistillation",
    "GroupLinearProjector",
    "PartialCrossAttentionProjector",
    "attention_output",
    "gl_loss",
    "pca_loss",
    "value_relation",
]


# ----- the paper's quantities ----------------------------------------------------------
def attention_output(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d)) v`` over (..., N, d) tensors."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    return scores.softmax(-1) @ v


def value_relation(v: torch.Tensor) -> torch.Tensor:
    """``v v^T / sqrt(d)`` over (..., N, d) tensors."""
    return v @ v.transpose(-2, -1) / math.sqrt(v.shape[-1])


def _split_heads(tokens: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, c = tokens.shape
    return tokens.reshape(b, n, heads, c // heads).transpose(1, 2)


def teacher_qkv(teacher_tokens: torch.Tensor, heads: int) -> torch.Tensor:
    """The teacher's queries = keys = values: its (B, N, D) features layer-normalized per
    position (no affine), as (B, heads, N, D / heads)."""
    t = F.layer_norm(teacher_tokens.float(), teacher_tokens.shape[-1:])
    return _split_heads(t, heads)


def pca_loss(
    student_qkv: Sequence[torch.Tensor],
    teacher_tokens: torch.Tensor,
    heads: int,
    cross_masks: Sequence[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two terms of ``L_proj1``: the student's (partially cross) attention output
    against the teacher's, and the value relations. ``student_qkv``: three (B, N, D)
    tensors; ``cross_masks``: three boolean (B, heads, N, D / heads) masks of the elements
    taken from the teacher (None: none, as in evaluation)."""
    q_s, k_s, v_s = (_split_heads(m.float(), heads) for m in student_qkv)
    t = teacher_qkv(teacher_tokens, heads)
    if cross_masks is None:
        g_q, g_k, g_v = q_s, k_s, v_s
    else:
        g_q, g_k, g_v = (torch.where(m, t, s) for m, s in zip(cross_masks, (q_s, k_s, v_s)))
    attn = F.mse_loss(attention_output(g_q, g_k, g_v), attention_output(t, t, t))
    return attn, F.mse_loss(value_relation(v_s), value_relation(t))


def gl_loss(projected: torch.Tensor, teacher_tokens: torch.Tensor) -> torch.Tensor:
    """``L_proj2 = ||h_T - h'_S||^2`` (mean over elements)."""
    return F.mse_loss(projected.float(), teacher_tokens.float())


# ----- trainable parts -----------------------------------------------------------------
class PartialCrossAttentionProjector(nn.Module):
    """Three 3x3 convolutions: the student's map to queries, keys and values of the
    teacher's width, returned as (B, H*W, D) tokens."""

    def __init__(self, in_chs: int, dim: int) -> None:
        super().__init__()
        self.q = nn.Conv2d(in_chs, dim, 3, padding=1)
        self.k = nn.Conv2d(in_chs, dim, 3, padding=1)
        self.v = nn.Conv2d(in_chs, dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return tuple(conv(x).flatten(2).transpose(1, 2) for conv in (self.q, self.k, self.v))


class GroupLinearProjector(nn.Module):
    """One linear layer per ``group`` x ``group`` block of a fixed ``grid``: the student's
    (B, C, H, W) map to (B, H*W, dim) tokens, with dropout on its input."""

    def __init__(
        self, in_chs: int, dim: int, grid: tuple[int, int], group: int = 4, dropout: float = 0.1
    ) -> None:
        super().__init__()
        h, w = grid
        per_row = -(-w // group)
        ids = torch.tensor(
            [(i // group) * per_row + j // group for i in range(h) for j in range(w)]
        )
        groups = int(ids.max()) + 1
        self.grid, self.group = (h, w), group
        self.weight = nn.Parameter(torch.empty(groups, dim, in_chs))
        self.bias = nn.Parameter(torch.empty(groups, dim))
        bound = 1.0 / math.sqrt(in_chs)
        for g in range(groups):
            nn.init.kaiming_uniform_(self.weight[g], a=math.sqrt(5))
        nn.init.uniform_(self.bias, -bound, bound)
        self.drop = nn.Dropout(dropout)
        order = torch.argsort(ids, stable=True)
        self.register_buffer("order", order, persistent=False)
        self.register_buffer("inverse", torch.argsort(order), persistent=False)
        self.sizes = torch.bincount(ids, minlength=groups).tolist()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.grid:
            raise ValueError(f"expected a {self.grid} grid, got {tuple(x.shape[-2:])}")
        tokens = self.drop(x.flatten(2).transpose(1, 2))[:, self.order]
        parts = tokens.split(self.sizes, dim=1)
        out = torch.cat([F.linear(p, self.weight[g], self.bias[g]) for g, p in enumerate(parts)], 1)
        return out[:, self.inverse]


def _discriminator(dim: int, hidden: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(dim, hidden),
        nn.LeakyReLU(0.2),
        nn.Linear(hidden, hidden),
        nn.LeakyReLU(0.2),
        nn.Linear(hidden, 1),
    )


# ----- helpers -------------------------------------------------------------------------
def _as_map(model: nn.Module, out: torch.Tensor) -> torch.Tensor:
    return model.tokens_to_map(out) if out.ndim == 3 else out


def _features_and_logits(
    model: nn.Module, x: torch.Tensor, position: int
) -> tuple[torch.Tensor, Any]:
    """``model(x)`` and, from the same pass, the map ``forward_intermediates(x,
    [position])`` gives (a hook on the same ``feature_info`` module)."""
    captured: list[Any] = []
    info = model.feature_info[position]
    handle = model.get_submodule(info.module).register_forward_hook(
        lambda _m, _i, out: captured.append(out) if not captured else None
    )
    try:
        logits = model(x)
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError(f"{type(model).__name__}: {info.module!r} did not run in forward")
    return _as_map(model, model._feature_tensor(captured[0], info)), logits


def _position(model: nn.Module, index: int, role: str, arg: str) -> int:
    n = len(model.feature_info)
    if not -n <= index < n:
        raise ValueError(
            f"the {role} {type(model).__name__} has {n} feature stages (feature_info); "
            f"{arg}={index} is out of range: use {-n} to {n - 1}"
        )
    return index % n


def _pool(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return x if tuple(x.shape[-2:]) == size else F.adaptive_avg_pool2d(x, size)


def multi_view(x: torch.Tensor, prob: float, size: int) -> torch.Tensor:
    """The multi-view generator: each image, with probability ``prob``, becomes a random
    resized crop (area 35-100%, flipped half the time) or gets a patch mask (a zeroed
    square of a quarter of the side), one of the two at random (torch's global RNG)."""
    if prob <= 0:
        return x
    b = x.shape[0]
    apply = (torch.rand(b) < prob).view(b, 1, 1, 1).to(x.device)
    crop_it = (torch.rand(b) < 0.5).view(b, 1, 1, 1).to(x.device)
    cropped = random_resized_crop(x, size, scale=(0.35, 1.0))
    masked = cutout(x, max(1, size // 4))
    return torch.where(apply, torch.where(crop_it, cropped, masked), x)


# ----- the task ------------------------------------------------------------------------
@register_task("cross_arch_kd")
class CrossArchitectureDistillation(DistillationTask):
    """Liu et al.'s PCA and GL projectors with multi-view adversarial training."""

    cacheable = False  # the method needs the teacher's features, not its logits

    def __init__(
        self,
        teacher: str,
        teacher_layer: int = -1,
        student_layer: int | None = None,
        heads: int = 0,
        group: int = 4,
        cross_prob: float = 0.5,
        gl_dropout: float = 0.1,
        weight: float = 0.2,
        attn_weight: float = 0.2,
        value_weight: float = 0.05,
        feat_weight: float = 0.05,
        adv_weight: float = 1.0,
        mvg_prob: float = 0.5,
        disc_hidden: int = 256,
    ) -> None:
        super().__init__(teacher)
        for name, value in (
            ("cross_prob", cross_prob),
            ("gl_dropout", gl_dropout),
            ("mvg_prob", mvg_prob),
        ):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if group < 1 or disc_hidden < 1 or heads < 0:
            raise ValueError(
                f"group and disc_hidden must be >= 1 and heads >= 0 (0: automatic), got "
                f"group={group}, disc_hidden={disc_hidden}, heads={heads}"
            )
        weights = dict(weight=weight, attn_weight=attn_weight, value_weight=value_weight)
        weights.update(feat_weight=feat_weight, adv_weight=adv_weight)
        negative = {k: v for k, v in weights.items() if v < 0}
        if negative:
            raise ValueError(f"loss weights must be >= 0, got {negative}")
        self.teacher_layer, self.student_layer, self.heads = (
            int(teacher_layer),
            student_layer,
            int(heads),
        )
        self.group, self.cross_prob, self.gl_dropout = (
            int(group),
            float(cross_prob),
            float(gl_dropout),
        )
        self.weight, self.adv_weight, self.mvg_prob = (
            float(weight),
            float(adv_weight),
            float(mvg_prob),
        )
        self.attn_weight, self.value_weight = float(attn_weight), float(value_weight)
        self.feat_weight = float(feat_weight)
        self.disc_hidden = int(disc_hidden)

    # ----- set-up ------------------------------------------------------------------
    def setup(self, model: nn.Module, data: Any, recipe: Any) -> None:
        super().setup(model, data, recipe)
        teacher = self.frozen["teacher"]
        self.t_pos = _position(teacher, self.teacher_layer, "teacher", "teacher_layer")
        x = data.val.images[:2].float().div(255.0)
        x = (x - torch.tensor(data.mean).view(1, -1, 1, 1)) / torch.tensor(data.std).view(
            1, -1, 1, 1
        )
        with torch.no_grad():
            t_map = _as_map(
                teacher, teacher.forward_intermediates(self.teacher_input(x), [self.t_pos])[0]
            )
            was_training = model.training
            model.eval()
            try:
                dev = next(model.parameters()).device
                s_maps = [_as_map(model, f) for f in model.forward_intermediates(x.to(dev))]
            finally:
                model.train(was_training)
        t_dim, th, tw = t_map.shape[1:]
        if self.student_layer is None:
            fits = [i for i, f in enumerate(s_maps) if f.shape[-2] >= th and f.shape[-1] >= tw]
            self.s_pos = fits[-1] if fits else len(s_maps) - 1
        else:
            self.s_pos = _position(model, int(self.student_layer), "student", "student_layer")
        s_chs, sh, sw = s_maps[self.s_pos].shape[1:]
        heads = self.heads or (t_dim // 64 if t_dim % 64 == 0 else 1)
        if t_dim % heads:
            raise ValueError(
                f"the teacher's features at teacher_layer={self.teacher_layer} have {t_dim} "
                f"channels, which {heads} heads do not divide; choose heads dividing {t_dim}"
            )
        self.num_heads = heads
        self.grid = (min(sh, th), min(sw, tw))
        self.img_size = int(data.img_size)
        # initialized from the recipe's seed, whatever the caller's random state
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(recipe.seed))
            self.trainable["pca"] = PartialCrossAttentionProjector(s_chs, t_dim)
            self.trainable["gl"] = GroupLinearProjector(
                s_chs, t_dim, self.grid, self.group, self.gl_dropout
            )
            self.trainable["disc"] = _discriminator(t_dim, self.disc_hidden)

    # ----- the loss ----------------------------------------------------------------
    def teacher_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """The teacher's features at ``teacher_layer``, pooled to the grid, (B, N, D)."""
        teacher = self.frozen["teacher"]
        t_map = _as_map(teacher, self.teacher_features(images, [self.t_pos])[0])
        return _pool(t_map.float(), self.grid).flatten(2).transpose(1, 2)

    def _cross_masks(self, like: torch.Tensor) -> list[torch.Tensor] | None:
        if not self.trainable.training or self.cross_prob <= 0:
            return None
        b, n, d = like.shape
        shape = (b, self.num_heads, n, d // self.num_heads)
        return [(torch.rand(shape) < self.cross_prob).to(like.device) for _ in range(3)]

    def projections(self, s_map: torch.Tensor, t_tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        s_map = _pool(s_map, self.grid)
        qkv = self.trainable["pca"](s_map)
        projected = self.trainable["gl"](s_map)
        attn, value = pca_loss(qkv, t_tokens, self.num_heads, self._cross_masks(qkv[0]))
        feat = gl_loss(projected, t_tokens)
        distill = self.attn_weight * attn + self.value_weight * value + self.feat_weight * feat
        return {
            "attn": attn,
            "value": value,
            "gl": feat,
            "distill": distill,
            "projected": projected,
        }

    def adversarial(
        self, projected: torch.Tensor, t_tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``L_MAD`` (reaches only the discriminator) and ``L_MVG`` (only the student)."""
        disc = self.trainable["disc"]
        real = disc(t_tokens.float())
        fake = disc(projected.detach().float())
        l_mad = F.binary_cross_entropy_with_logits(
            real, torch.ones_like(real)
        ) + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
        frozen = {k: v.detach() for k, v in disc.named_parameters()}
        fooled = torch.func.functional_call(disc, frozen, (projected.float(),))
        return l_mad, F.binary_cross_entropy_with_logits(fooled, torch.ones_like(fooled))

    def step(self, batch: Any, state: Any) -> dict[str, Any]:
        model = state.model
        t_tokens = self.teacher_tokens(batch.images)
        student_in = multi_view(batch.images, self.mvg_prob, self.img_size)
        s_map, out = _features_and_logits(model, student_in, self.s_pos)
        heads = list(out) if isinstance(out, (tuple, list)) else [out]
        ce = sum(soft_cross_entropy(h, batch.targets) for h in heads) / len(heads)
        terms = self.projections(s_map, t_tokens)
        distill = terms["distill"]
        loss = ce + self.weight * distill
        result: dict[str, Any] = {k: terms[k].detach() for k in ("attn", "value", "gl")}
        result["ce"] = ce.detach()
        if self.adv_weight > 0:
            l_mad, l_mvg = self.adversarial(terms["projected"], t_tokens)
            loss = loss + self.weight * self.adv_weight * l_mvg + l_mad
            result.update(mvg=l_mvg.detach(), mad=l_mad.detach())
        logits = heads[0] if len(heads) == 1 else torch.stack(heads).mean(0)
        result.update(
            loss=loss,
            distill=distill.detach(),
            acc=(logits.detach().argmax(-1) == batch.labels).float().mean(),
        )
        return result

    def eval_step(self, batch: Any, state: Any) -> dict[str, float]:
        metrics = ClassificationTask.eval_step(self, batch, state)
        t_tokens = self.teacher_tokens(batch.images)
        s_map = _as_map(
            state.model, state.model.forward_intermediates(batch.images, [self.s_pos])[0]
        )
        terms = self.projections(s_map, t_tokens)
        metrics.update({k: float(terms[k]) for k in ("attn", "value", "gl", "distill")})
        return metrics
