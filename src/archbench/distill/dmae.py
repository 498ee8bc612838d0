"""DMAE: *Masked Autoencoders Enable Efficient Knowledge Distillers* (Bai, Wang, Xiao, Wei,
Wang, Yuille, Zhou and Xie, CVPR 2023).

Label-free distillation during MAE pre-training. The student (a ViT, or any patch-token
model) sees an image with a random ``mask_ratio`` of its patches masked (75% by default,
chosen per sample), reconstructs the pixels of the masked patches with a light decoder as
MAE does, and aligns an intermediate feature to the teacher's:

``loss = L_rec + alpha * L_feat``

- ``L_rec``: MAE's loss, the mean over masked patches of each patch's mean squared error
  between the decoder's prediction and the (normalized) image patch; with
  ``norm_pix=True`` each target patch is first standardized by its own mean and variance.
  The decoder embeds the student's final tokens linearly, puts a learned mask token at
  every masked position, adds fixed 2-D sin-cos positions (zero for prefix tokens) and
  runs pre-norm transformer blocks, a LayerNorm and a linear map to ``patch^2 * C``
  pixels.
- ``L_feat``: the L1 distance between the L2-normalized teacher feature and the
  L2-normalized, linearly projected student feature (the official ``fc-1layer``
  projector, student width to teacher width), averaged over the visible patch positions
  and the class token (when both models have one), as the official code aligns the
  visible sequence. The features are block outputs at ``student_layer`` and
  ``teacher_layer``, by default the block at three quarters of each model's depth (the
  official ViT-B student's block 8 of 12 and ViT-L teacher's block 17 of 24, counted
  from 0). The teacher runs only up to that block (``forward_intermediates`` stops there).

Official defaults used here: mask ratio 0.75, ``alpha = 1`` (the terms are summed), L1 on
normalized features, a linear projector, unnormalized pixel targets, a 512-wide decoder
of 8 blocks with 16 heads (``mae_vit_base_patch16_dec512d8b``; smaller students will want
a narrower, shallower one).

Where archbench differs:

- Masking. MAE drops the masked tokens so the encoder sees only the visible ones; the
  registered ViTs add their position embedding to the full token grid inside
  ``forward_features``, so dropping tokens would need per-architecture code. Instead the
  masked patches are set to zero in the normalized input (the dataset's mean colour)
  before the patch embedding, and the decoder puts its mask token at the masked
  positions whatever the encoder produced there. The objective is the same; the compute
  saving of encoding a quarter of the tokens is lost, and visible tokens can attend to
  the (uninformative) masked ones.
- The teacher sees the full, unmasked image (the official MAE teacher encodes the same
  visible subset). Any registered model can be the teacher this way, including ones
  never trained on masked inputs; its features at the visible positions then carry the
  context of the whole image.
- A teacher feature on another grid than the student's is resized bilinearly to it.
- The decoder and projector are initialized from the recipe's seed, whatever the global
  random state.

The run is pre-training: ``uses_labels = False``, the best checkpoint is the lowest
``val_loss`` (validation masks are drawn from a generator seeded by the recipe's seed
and the batch, so epochs are compared on the same masks). To fine-tune, build the same
student, load the run's weights (``archbench.train.load_checkpoint(RUN /
"checkpoints/best.safetensors", model)``; the decoder and projector stay in the
checkpoint's task state and are not loaded into the model) and train it with the
classification task (``fit(model, data, recipe, out)``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import TransformerBlock
from ..train import register_task
from ..train.evaluate import normalized_batches
from .scalekd import as_map, forward_with_features
from .teacher import DistillationTask

__all__ = [
    "MaskedDecoder",
    "MaskedDistillation",
    "feature_alignment_loss",
    "mask_patches",
    "random_patch_mask",
    "reconstruction_loss",
    "sincos_positions",
]


def random_patch_mask(
    batch: int,
    patches: int,
    ratio: float,
    generator: torch.Generator | None = None,
    device: Any = None,
) -> torch.Tensor:
    """(B, L) with 1 at masked patches: ``L - int(L * (1 - ratio))`` random ones per sample."""
    keep = int(patches * (1 - ratio))
    noise = torch.rand(batch, patches, generator=generator, device=None if generator else device)
    order = noise.argsort(dim=1)
    mask = torch.ones(batch, patches, device=noise.device)
    mask.scatter_(1, order[:, :keep], 0.0)
    return mask.to(device) if device is not None else mask


def mask_patches(images: torch.Tensor, mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``images`` with the masked patches (``mask`` (B, gh * gw) == 1) set to zero."""
    b, _, h, w = images.shape
    gh, gw = grid
    keep = 1.0 - mask.view(b, 1, gh, gw).to(images.dtype)
    keep = keep.repeat_interleave(h // gh, dim=2).repeat_interleave(w // gw, dim=3)
    return images * keep


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, L, patch * patch * C), patches in row-major order, each
    flattened as (row, column, channel)."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def reconstruction_loss(
    pred: torch.Tensor, images: torch.Tensor, mask: torch.Tensor, patch: int, norm_pix: bool = False
) -> torch.Tensor:
    """MAE's loss: per-patch mean squared error, averaged over the masked patches."""
    target = patchify(images.float(), patch)
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
    per_patch = (pred.float() - target).pow(2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum()


def feature_alignment_loss(
    student: torch.Tensor, teacher: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """``mean |n(t) - n(s)|`` over the channels of the positions with ``weight`` 1 (B, L);
    ``n`` is the L2 normalization of each position's feature."""
    diff = (F.normalize(teacher.float(), dim=-1) - F.normalize(student.float(), dim=-1)).abs()
    return (diff.mean(dim=-1) * weight).sum() / weight.sum()


def sincos_positions(dim: int, grid: tuple[int, int]) -> torch.Tensor:
    """Fixed 2-D sin-cos positions (gh * gw, dim): half the channels encode the row, half
    the column, each as sines and cosines of ``dim / 4`` frequencies ``1 / 10000^(i / (dim / 4))``."""
    quarter = dim // 4
    freqs = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(
        torch.arange(grid[0], dtype=torch.float64),
        torch.arange(grid[1], dtype=torch.float64),
        indexing="ij",
    )

    def encode(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1, 1) * freqs.view(1, -1)
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(rows), encode(cols)], dim=1).float()


class MaskedDecoder(nn.Module):
    """MAE's decoder: linear embedding, mask tokens at masked positions, fixed sin-cos
    positions, transformer blocks, LayerNorm, linear prediction of each patch's pixels."""

    def __init__(
        self,
        in_dim: int,
        dim: int,
        depth: int,
        num_heads: int,
        grid: tuple[int, int],
        num_prefix_tokens: int,
        patch_pixels: int,
    ) -> None:
        super().__init__()
        self.num_prefix_tokens = num_prefix_tokens
        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        pos = torch.cat([torch.zeros(num_prefix_tokens, dim), sincos_positions(dim, grid)])
        self.register_buffer("pos_embed", pos.unsqueeze(0), persistent=False)
        self.blocks = nn.Sequential(*[TransformerBlock(dim, num_heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pred = nn.Linear(dim, patch_pixels)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.mask_token, std=0.02)

    def no_weight_decay(self) -> set[str]:
        return {"mask_token"}

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``tokens`` (B, prefix + L, C) from the encoder, ``mask`` (B, L) -> (B, L, pixels)."""
        x = self.embed(tokens)
        npt = self.num_prefix_tokens
        masked = mask.unsqueeze(-1).to(torch.bool)
        grid = torch.where(masked, self.mask_token.to(x.dtype), x[:, npt:])
        x = torch.cat([x[:, :npt], grid], dim=1) + self.pos_embed
        return self.pred(self.norm(self.blocks(x)))[:, npt:]


def _three_quarters(n: int) -> int:
    return math.ceil(0.75 * n) - 1


@register_task("dmae")
class MaskedDistillation(DistillationTask):
    """DMAE: MAE pre-training of a patch-token student plus feature distillation."""

    cacheable = False  # the student sees masked images, the teacher the full ones
    match_classes = False  # only the teacher's features are used
    uses_labels = False
    monitor = ("val_loss", "min")

    def __init__(
        self,
        teacher: str,
        mask_ratio: float = 0.75,
        alpha: float = 1.0,
        student_layer: int | None = None,
        teacher_layer: int | None = None,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        norm_pix: bool = False,
        cache: str = "",
    ) -> None:
        super().__init__(teacher, cache)
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        if alpha < 0:
            raise ValueError(f"alpha (the feature distillation weight) must be >= 0, got {alpha}")
        if decoder_depth < 1 or decoder_heads < 1:
            raise ValueError(
                f"decoder_depth and decoder_heads must be >= 1, got {decoder_depth}, {decoder_heads}"
            )
        if decoder_dim % 4 or decoder_dim % decoder_heads:
            raise ValueError(
                f"decoder_dim={decoder_dim} must be a multiple of 4 (2-D sin-cos positions) and "
                f"of decoder_heads={decoder_heads}"
            )
        self.mask_ratio, self.alpha = float(mask_ratio), float(alpha)
        self.student_layer, self.teacher_layer = student_layer, teacher_layer
        self.decoder_dim, self.decoder_depth = int(decoder_dim), int(decoder_depth)
        self.decoder_heads, self.norm_pix = int(decoder_heads), bool(norm_pix)

    # ----- set-up ------------------------------------------------------------------
    def setup(self, model: nn.Module, data: Any, recipe: Any) -> None:
        super().setup(model, data, recipe)
        teacher = self.frozen["teacher"]
        self._s_pos = self._layer(model, self.student_layer, "student_layer")
        self._t_pos = self._layer(teacher, self.teacher_layer, "teacher_layer")
        x, _, _ = next(normalized_batches(data.val, 2))
        dev = next(model.parameters()).device
        was_training = model.training
        model.eval()
        with torch.no_grad():
            final, (s_feat,) = forward_with_features(model, x.to(dev), [self._s_pos])
            (t_feat,) = self.teacher_features(x, [self._t_pos])
        model.train(was_training)
        name = type(model).__name__
        if final.ndim != 3:
            raise ValueError(
                f"dmae needs a patch-token student (a ViT-like model whose forward_features "
                f"gives B x N x C tokens); {name} gives shape {tuple(final.shape)}: use a "
                "token model such as vit_pico"
            )
        grid = tuple(model.tokens_to_map(final).shape[-2:])
        h, w = x.shape[-2:]
        if h % grid[0] or w % grid[1] or h // grid[0] != w // grid[1]:
            raise ValueError(
                f"{name}'s {grid[0]}x{grid[1]} token grid does not tile the {h}x{w} images "
                "into square patches, so its patches cannot be masked in pixel space"
            )
        s_map = as_map(model, s_feat)
        if tuple(s_map.shape[-2:]) != grid:
            raise ValueError(
                f"student_layer={self.student_layer} gives a {tuple(s_map.shape[-2:])} grid but "
                f"{name}'s patch grid is {grid}; choose a block on the patch grid"
            )
        self._grid, self._patch = grid, h // grid[0]
        self._npt = final.shape[1] - grid[0] * grid[1]
        self._s_cls = s_feat.ndim == 3 and s_feat.shape[1] > grid[0] * grid[1]
        t_grid = as_map(teacher, t_feat).shape[-2:]
        self._t_cls = t_feat.ndim == 3 and t_feat.shape[1] > t_grid[0] * t_grid[1]
        with torch.random.fork_rng(devices=[]):  # their start: a function of the seed
            torch.manual_seed(int(recipe.seed))
            self.trainable["projector"] = nn.Linear(
                s_map.shape[1], as_map(teacher, t_feat).shape[1]
            )
            self.trainable["decoder"] = MaskedDecoder(
                final.shape[-1],
                self.decoder_dim,
                self.decoder_depth,
                self.decoder_heads,
                grid,
                self._npt,
                self._patch * self._patch * x.shape[1],
            )
        if int(grid[0] * grid[1] * (1 - self.mask_ratio)) < 1:
            raise ValueError(
                f"mask_ratio={self.mask_ratio} leaves no visible patch of {name}'s "
                f"{grid[0] * grid[1]}; lower it"
            )

    @staticmethod
    def _layer(model: nn.Module, index: int | None, what: str) -> int:
        n = len(model.feature_info)
        if index is None:
            return _three_quarters(n)
        if not -n <= int(index) < n:
            raise ValueError(
                f"{what}={index} is out of range: {type(model).__name__} has {n} feature_info "
                f"entries (use {-n} to {n - 1})"
            )
        return int(index) % n

    # ----- the objective -----------------------------------------------------------
    def _tokens(self, model: nn.Module, feat: torch.Tensor) -> torch.Tensor:
        """(B, [cls +] L, C): the class token (when kept) and the patch-grid features."""
        grid_map = as_map(model, feat)
        if tuple(grid_map.shape[-2:]) != self._grid:
            grid_map = F.interpolate(
                grid_map.float(), size=self._grid, mode="bilinear", align_corners=False
            )
        tokens = grid_map.flatten(2).transpose(1, 2)
        if self._s_cls and self._t_cls:
            tokens = torch.cat([feat[:, :1], tokens], dim=1)
        return tokens

    def losses(
        self, images: torch.Tensor, model: nn.Module, mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        masked = mask_patches(images, mask, self._grid)
        final, (s_feat,) = forward_with_features(model, masked, [self._s_pos])
        pred = self.trainable["decoder"](final, mask)
        rec = reconstruction_loss(pred, images, mask, self._patch, self.norm_pix)
        (t_feat,) = self.teacher_features(images, [self._t_pos])
        student = self.trainable["projector"](self._tokens(model, s_feat))
        target = self._tokens(self.frozen["teacher"], t_feat)
        visible = 1.0 - mask
        if student.shape[1] > visible.shape[1]:  # the class token counts as visible
            visible = torch.cat([visible.new_ones(visible.shape[0], 1), visible], dim=1)
        feat = feature_alignment_loss(student, target, visible)
        return {"loss": rec + self.alpha * feat, "reconstruction": rec, "feature": feat}

    def step(self, batch: Any, state: Any) -> dict[str, Any]:
        images = batch.images
        n = self._grid[0] * self._grid[1]
        mask = random_patch_mask(images.shape[0], n, self.mask_ratio, device=images.device)
        out = self.losses(images, state.model, mask)
        return {
            "loss": out["loss"],
            "reconstruction": out["reconstruction"].detach(),
            "feature": out["feature"].detach(),
        }

    def eval_step(self, batch: Any, state: Any) -> dict[str, float]:
        images = batch.images
        seed = int(getattr(state.recipe, "seed", 0)) * 1_000_003 + int(batch.index[0])
        gen = torch.Generator().manual_seed(seed)
        n = self._grid[0] * self._grid[1]
        mask = random_patch_mask(images.shape[0], n, self.mask_ratio, gen, images.device)
        return {k: float(v) for k, v in self.losses(images, state.model, mask).items()}
