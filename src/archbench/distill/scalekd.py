"""ScaleKD: *ScaleKD: Strong Vision Transformers Could Be Excellent Teachers* (Fan, Li, Liu
and Yao, NeurIPS 2024).

A (pre-trained, strong) ViT teaches a student of any family (CNN, MLP-mixer, ViT) with
three coupled parts, on two student features: an earlier one ``s3`` and the last one
``s4`` (``student_layers``, by default the last two ``feature_info`` entries: a CNN's
stages 3 and 4, an isotropic model's last two blocks).

- **Cross-attention projector** (feature paradigm alignment). The student map ``F_s``
  (C_s x H_s x W_s) goes through ``3x3 conv + BN + ReLU`` plus a learned position
  embedding; its H_s W_s positions are keys and values (linear maps to the teacher width
  C_t) of a multi-head cross attention whose queries are the teacher's grid positions:
  ``A = softmax(s * Q K^T / sqrt(d_head))`` with the official softmax scale ``s = 5``,
  output ``Z = W_o A V``, then ``LN`` and a residual ReLU MLP of ratio 4:
  ``P = LN(Z) + MLP(LN(Z))``. The queries are learned embeddings (one per teacher grid
  position, passed through ``1x1 conv + ReLU``) for ``s3``, and the teacher-perceived
  ``s3`` features (below) for ``s4``.
- **Dual-view feature mimicking**. Each student feature has two projectors: one is
  mimicked in the spatial view, one in the frequency view with the direct (DC) component
  removed. With per-position channel normalization ``n(X)`` (L2 over channels):
  ``L_spatial = a_s * sum((n(P) - n(T))^2) / B`` and
  ``L_freq = a_f * sum((n(D^-1 z(D P)) - n(D^-1 z(D T)))^2) / B``, where ``D`` is the 2-D
  DCT-II of each channel and ``z`` zeroes its (0, 0) coefficient. Removing the DC
  coefficient and transforming back is the same as subtracting each channel's spatial
  mean, which the tests check.
- **Teacher parameter perception**. The ``s3`` projections (spatial and frequency, in the
  teacher's width and grid at ``teacher_layer``) replace the teacher's own output at that
  layer and run through the teacher's frozen later blocks and final norm; the results are
  mimicked against the teacher's final features (the two ``s3`` terms), and serve as the
  queries of the ``s4`` projectors, whose outputs are mimicked against the teacher's final
  features directly (the two ``s4`` terms).

The objective is ``(1 - kd_alpha) * CE + kd_alpha * T^2 * KL(p_t || p_s) + L_s3_spatial +
L_s3_freq + L_s4_spatial + L_s4_freq``. Official defaults: ``alpha = [0.08, 0.06]``
(spatial, frequency), softmax scale 5, logit KD with temperature 1 and weight 0.5.

Where archbench differs from the official code (mmcls, Swin/BEiT/ViT teachers):

- The teacher's later blocks are run generically: a forward hook on the ``feature_info``
  module at ``teacher_layer`` swaps its output for the projected student features while
  ``forward_features`` runs, so any registered teacher works with no per-architecture
  ``forward_specific_stage``. A token teacher keeps its own prefix (class) tokens at that
  layer (the official ViT path runs the later blocks on patch tokens only). The early
  blocks run again on the images in that pass; nothing before the swap needs gradients,
  so no autograd graph is kept for them.
- The logit term uses :func:`kd_loss` (KL); the official ``KDLoss`` is the cross-entropy
  against the teacher's probabilities, which differs by the teacher's entropy, a constant:
  same gradients.
- The projectors' number of heads is one argument for both levels (official: 16 and 24
  heads for Swin-L's 768 and 1536 widths); windowed attention (``window_shapes``, (1, 1)
  in every official config) is left out.
- The teacher's logits come from the same pass as its features, so no logit cache.
- For a deep isotropic student (ViT, Mixer) the default ``s3`` is its penultimate block;
  an earlier one (e.g. at three quarters of the depth) can be given in ``student_layers``.

The projectors are initialized from the recipe's seed, whatever the global random state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..train import register_task, soft_cross_entropy
from ..train.evaluate import normalized_batches
from ..train.tasks import classification_metrics
from .logit import kd_loss
from .teacher import DistillationTask

__all__ = [
    "CrossAttentionProjector",
    "ScaleKD",
    "dct_matrix",
    "forward_with_features",
    "mimic_loss",
    "remove_direct_component",
]


# ----- features through the model's own modules ----------------------------------------
def _layer_tensor(output: Any, width: int) -> torch.Tensor:
    """The tensor a ``feature_info`` module's output stands for (in a tuple: by width)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, torch.Tensor) and item.ndim in (3, 4):
                if (item.shape[1] if item.ndim == 4 else item.shape[-1]) == width:
                    return item
    raise TypeError(f"a feature_info module returned {type(output).__name__} without a feature")


def forward_with_features(
    model: nn.Module, x: torch.Tensor, positions: Sequence[int]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``forward_features(x)`` and the outputs of ``model.feature_info[positions]``, in one
    pass (the same forward hooks as ``forward_intermediates``, without stopping early)."""
    captured: dict[int, torch.Tensor] = {}
    handles = []
    for pos in positions:
        info = model.feature_info[pos]

        def keep(
            _m: nn.Module, _i: Any, out: Any, pos: int = pos, width: int = info.num_chs
        ) -> None:
            captured.setdefault(pos, _layer_tensor(out, width))

        handles.append(model.get_submodule(info.module).register_forward_hook(keep))
    try:
        final = model.forward_features(x)
    finally:
        for handle in handles:
            handle.remove()
    return final, [captured[p] for p in positions]


def as_map(model: nn.Module, t: torch.Tensor) -> torch.Tensor:
    """A B x C x H x W map of a feature: a map as is, tokens folded by ``tokens_to_map``."""
    return model.tokens_to_map(t) if t.ndim == 3 else t


def _position(index: int, n: int, what: str, model: nn.Module) -> int:
    if not -n <= int(index) < n:
        raise ValueError(
            f"{what}={index} is out of range: {type(model).__name__} has {n} feature_info "
            f"entries (use {-n} to {n - 1})"
        )
    return int(index) % n


# ----- dual-view mimicking -----------------------------------------------------------------
def dct_matrix(n: int, device: Any = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The orthonormal DCT-II matrix ``D[k, i] = c_k cos(pi (2i + 1) k / 2n)``."""
    i = torch.arange(n, device=device, dtype=torch.float64)
    k = i.view(-1, 1)
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] = d[0] / math.sqrt(2.0)
    return d.to(dtype)


def remove_direct_component(x: torch.Tensor) -> torch.Tensor:
    """Zero the (0, 0) coefficient of each channel's 2-D DCT and transform back."""
    h, w = x.shape[-2:]
    dh, dw = dct_matrix(h, x.device, x.dtype), dct_matrix(w, x.device, x.dtype)
    coeffs = dh @ x @ dw.T
    keep = torch.ones_like(coeffs[:1, :1])
    keep[..., 0, 0] = 0.0
    return dh.T @ (coeffs * keep) @ dw


def mimic_loss(student: torch.Tensor, teacher: torch.Tensor, frequency: bool) -> torch.Tensor:
    """``sum((n(S) - n(T))^2) / B`` over B x C x H x W maps, ``n`` the L2 normalization
    over channels at each position; in the frequency view the DC component is removed
    from both first."""
    s, t = student.float(), teacher.float()
    if frequency:  # in float64: features far from zero-mean lose digits to the DC removal
        s = remove_direct_component(s.double()).float()
        t = remove_direct_component(t.double()).float()
    diff = F.normalize(s, dim=1) - F.normalize(t, dim=1)
    return diff.pow(2).sum() / s.shape[0]


# ----- the projector -----------------------------------------------------------------------
class CrossAttentionProjector(nn.Module):
    """ScaleKD's cross-attention projector: student positions are keys and values, the
    teacher's grid positions (learned, or given) are the queries; output B x N_q x C_t."""

    def __init__(
        self,
        student_dim: int,
        student_hw: tuple[int, int],
        teacher_dim: int,
        query_hw: tuple[int, int],
        num_heads: int,
        softmax_scale: float,
        learned_query: bool,
    ) -> None:
        super().__init__()
        self.query_hw, self.num_heads = tuple(query_hw), num_heads
        self.scale = (teacher_dim // num_heads) ** -0.5 * softmax_scale
        self.student_in = nn.Sequential(
            nn.Conv2d(student_dim, student_dim, 3, padding=1),
            nn.BatchNorm2d(student_dim),
            nn.ReLU(),
        )
        self.pos_embed = nn.Parameter(torch.zeros(1, student_dim, *student_hw))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.query = nn.Parameter(torch.randn(1, teacher_dim, *query_hw)) if learned_query else None
        self.query_in = nn.Sequential(nn.Conv2d(teacher_dim, teacher_dim, 1), nn.ReLU())
        self.q = nn.Linear(teacher_dim, teacher_dim)
        self.k = nn.Linear(student_dim, teacher_dim)
        self.v = nn.Linear(student_dim, teacher_dim)
        self.proj = nn.Linear(teacher_dim, teacher_dim)
        self.norm = nn.LayerNorm(teacher_dim)
        self.mlp = nn.Sequential(
            nn.Linear(teacher_dim, 4 * teacher_dim),
            nn.ReLU(),
            nn.Linear(4 * teacher_dim, teacher_dim),
        )

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "query"}

    def forward(self, x: torch.Tensor, query: torch.Tensor | None = None) -> torch.Tensor:
        b = x.shape[0]
        if query is None:
            if self.query is None:
                raise ValueError("this projector takes its queries from the caller")
            query = self.query.expand(b, -1, -1, -1)
        kv = (self.student_in(x) + self.pos_embed).flatten(2).transpose(1, 2)
        qs = self.query_in(query).flatten(2).transpose(1, 2)
        h = self.num_heads

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, t.shape[1], h, -1).transpose(1, 2)

        q, k, v = heads(self.q(qs)), heads(self.k(kv)), heads(self.v(kv))
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        z = self.proj((attn @ v).transpose(1, 2).reshape(b, qs.shape[1], -1))
        z = self.norm(z)
        return z + self.mlp(z)


def _tokens_to_grid(tokens: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *hw)


@register_task("scalekd")
class ScaleKD(DistillationTask):
    """ScaleKD from a (ViT) teacher to a student of any family; see the module docstring."""

    cacheable = False  # the teacher runs every step for its features; logits come with them

    def __init__(
        self,
        teacher: str,
        student_layers: Sequence[int] = (-2, -1),
        teacher_layer: int = -2,
        alpha_spatial: float = 0.08,
        alpha_frequency: float = 0.06,
        kd_alpha: float = 0.5,
        temperature: float = 1.0,
        num_heads: int = 8,
        softmax_scale: float = 5.0,
        cache: str = "",
    ) -> None:
        super().__init__(teacher, cache)
        if isinstance(student_layers, (str, bytes)) or len(student_layers) != 2:
            raise ValueError(
                f"student_layers must be two feature_info positions (earlier, last), got "
                f"{student_layers!r}"
            )
        for name, value in (("alpha_spatial", alpha_spatial), ("alpha_frequency", alpha_frequency)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if not 0.0 <= kd_alpha <= 1.0:
            raise ValueError(f"kd_alpha must be in [0, 1], got {kd_alpha}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if num_heads < 1:
            raise ValueError(f"num_heads must be >= 1, got {num_heads}")
        self.student_layers = [int(i) for i in student_layers]
        self.teacher_layer = int(teacher_layer)
        self.alpha_spatial, self.alpha_frequency = float(alpha_spatial), float(alpha_frequency)
        self.kd_alpha, self.temperature = float(kd_alpha), float(temperature)
        self.num_heads, self.softmax_scale = int(num_heads), float(softmax_scale)

    # ----- set-up ------------------------------------------------------------------
    def setup(self, model: nn.Module, data: Any, recipe: Any) -> None:
        super().setup(model, data, recipe)
        teacher = self.frozen["teacher"]
        n_s, n_t = len(model.feature_info), len(teacher.feature_info)
        s3, s4 = (_position(i, n_s, "student_layers", model) for i in self.student_layers)
        if s3 >= s4:
            raise ValueError(
                f"student_layers {self.student_layers} must name an earlier feature, then a "
                f"later one of {type(model).__name__}'s {n_s} feature_info entries"
            )
        t3 = _position(self.teacher_layer, n_t, "teacher_layer", teacher)
        if t3 == n_t - 1:
            raise ValueError(
                f"teacher_layer={self.teacher_layer} is the teacher's last feature_info entry; "
                "teacher parameter perception runs the teacher's blocks after it, so choose "
                "an earlier one (e.g. -2)"
            )
        self._positions, self._t_position = (s3, s4), t3
        self._t_module = teacher.feature_info[t3].module

        x, _, _ = next(normalized_batches(data.val, 2))
        dev = next(model.parameters()).device
        was_training = model.training
        model.eval()
        with torch.no_grad():
            _, (f3, f4) = forward_with_features(model, x.to(dev), (s3, s4))
            t_final, t_mid = self._teacher_pass(self.teacher_input(x))
        model.train(was_training)
        s3_map, s4_map = as_map(model, f3), as_map(model, f4)
        mid_map = as_map(teacher, t_mid)
        if t_final.ndim not in (3, 4):
            raise ValueError(
                f"the teacher's forward_features gives shape {tuple(t_final.shape)}; ScaleKD "
                "needs a final feature map or tokens to mimic"
            )
        final_map = as_map(teacher, t_final)
        c_mid, c_final = mid_map.shape[1], final_map.shape[1]
        for width in (c_mid, c_final):
            if width % self.num_heads:
                raise ValueError(
                    f"num_heads={self.num_heads} does not divide the teacher's width {width} "
                    f"(at teacher_layer and its final features: {c_mid}, {c_final}); choose a "
                    "divisor"
                )
        self._mid_hw = tuple(mid_map.shape[-2:])
        self._final_hw = tuple(final_map.shape[-2:])
        with torch.random.fork_rng(devices=[]):  # the projectors' start: a function of the seed
            torch.manual_seed(int(recipe.seed))
            self._build_projectors(s3_map, s4_map, c_mid, c_final)

    def _build_projectors(
        self, s3_map: torch.Tensor, s4_map: torch.Tensor, c_mid: int, c_final: int
    ) -> None:
        for level, s_map, c_t, hw, learned in (
            ("s3", s3_map, c_mid, self._mid_hw, True),
            ("s4", s4_map, c_final, self._final_hw, False),
        ):
            for view in ("spatial", "frequency"):
                self.trainable[f"{level}_{view}"] = CrossAttentionProjector(
                    s_map.shape[1],
                    tuple(s_map.shape[-2:]),
                    c_t,
                    hw,
                    self.num_heads,
                    self.softmax_scale,
                    learned_query=learned,
                )

    # ----- the teacher -------------------------------------------------------------
    def _teacher_pass(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's final features and its raw output at ``teacher_layer``."""
        teacher = self.frozen["teacher"]
        module = teacher.get_submodule(self._t_module)
        seen: list[Any] = []
        handle = module.register_forward_hook(lambda _m, _i, out: seen.append(out))
        try:
            with torch.no_grad():
                final = teacher.forward_features(images)
        finally:
            handle.remove()
        out = seen[0]
        if not isinstance(out, torch.Tensor) or out.ndim not in (3, 4):
            raise ValueError(
                f"teacher_layer={self.teacher_layer} points at {self._t_module!r}, whose output "
                f"is {type(out).__name__}, not one map or token tensor; ScaleKD feeds the "
                "student's features into the teacher's later blocks through that output, so "
                "choose another teacher_layer"
            )
        return final, out

    def perceive(self, images: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        """The teacher's final feature maps when ``maps`` (k * B x C_t x H x W, at
        ``teacher_layer``'s width and grid) replace its own features there.

        The teacher's frozen later blocks run on them (gradients flow back to ``maps``);
        a token teacher keeps its own prefix tokens at that layer.
        """
        teacher = self.frozen["teacher"]
        reps = maps.shape[0] // images.shape[0]

        def swap(_m: nn.Module, _i: Any, out: torch.Tensor) -> torch.Tensor:
            new = maps.to(out.dtype)
            if out.ndim == 4:
                return new
            grid = new.flatten(2).transpose(1, 2)
            return torch.cat([out[:, : out.shape[1] - grid.shape[1]], grid], dim=1)

        handle = teacher.get_submodule(self._t_module).register_forward_hook(swap)
        try:
            final = teacher.forward_features(images.repeat(reps, 1, 1, 1))
        finally:
            handle.remove()
        return as_map(teacher, final)

    # ----- the objective -----------------------------------------------------------
    def losses(self, images: torch.Tensor, model: nn.Module) -> dict[str, torch.Tensor]:
        """Student logits, teacher logits and the four feature terms of one batch."""
        final, (f3, f4) = forward_with_features(model, images, self._positions)
        logits = model.forward_head(final)
        s3, s4 = as_map(model, f3), as_map(model, f4)
        t_images = self.teacher_input(images)
        teacher = self.frozen["teacher"]
        t_final, _ = self._teacher_pass(t_images)
        with torch.no_grad():
            t_logits = teacher.forward_head(t_final).float()
        target = as_map(teacher, t_final).float()
        p = self.trainable
        mid = [_tokens_to_grid(p[f"s3_{v}"](s3), self._mid_hw) for v in ("spatial", "frequency")]
        perceived = self.perceive(t_images, torch.cat(mid)).chunk(2)
        out = {"logits": logits, "teacher_logits": t_logits}
        for i, (view, alpha) in enumerate(
            (("spatial", self.alpha_spatial), ("frequency", self.alpha_frequency))
        ):
            freq = view == "frequency"
            s4_proj = _tokens_to_grid(p[f"s4_{view}"](s4, query=perceived[i]), self._final_hw)
            out[f"s3_{view}"] = alpha * mimic_loss(perceived[i], target, freq)
            out[f"s4_{view}"] = alpha * mimic_loss(s4_proj, target, freq)
        return out

    _TERMS = ("s3_spatial", "s3_frequency", "s4_spatial", "s4_frequency")

    def step(self, batch: Any, state: Any) -> dict[str, Any]:
        parts = self.losses(batch.images, state.model)
        logits = parts["logits"]
        ce = soft_cross_entropy(logits, batch.targets)
        kd = kd_loss(logits, parts["teacher_logits"], self.temperature)
        feature = sum(parts[k] for k in self._TERMS)
        loss = (1 - self.kd_alpha) * ce + self.kd_alpha * kd + feature
        acc = (logits.detach().argmax(-1) == batch.labels).float().mean()
        logged = {k: parts[k].detach() for k in self._TERMS}
        return {
            "loss": loss,
            "ce": ce.detach(),
            "kd": kd.detach(),
            "feature": feature.detach(),
            **logged,
            "acc": acc,
        }

    def eval_step(self, batch: Any, state: Any) -> dict[str, float]:
        parts = self.losses(batch.images, state.model)
        m = classification_metrics(parts["logits"], batch.labels)
        n = m.pop("n")
        metrics = {k: v / n for k, v in m.items()}
        metrics["kd"] = float(kd_loss(parts["logits"], parts["teacher_logits"], self.temperature))
        for k in self._TERMS:
            metrics[k] = float(parts[k])
        metrics["feature"] = sum(metrics[k] for k in self._TERMS)
        return metrics
