"""SparK: *Designing BERT for Convolutional Networks: Sparse and Hierarchical Masked
Modeling* (Tian, Jiang, Diao, Lin, Wang and Yuan, ICLR 2023).

Masked image modeling for any registered CNN, through its stages (``feature_info``).

- Masking: the image is cut into patches of the encoder's total stride ``R`` (the
  reduction of its last stage) and ``mask_ratio`` (0.6) of them are dropped per image.
- Sparse encoder: the masked image is encoded as if only the visible patches existed.
  As in the official code, every convolution, pooling and normalization output is
  multiplied by the mask at its resolution, so masked positions stay exactly zero through
  the whole network, and BatchNorm computes its batch statistics over the visible
  positions only (its running statistics are updated with those). Here this is done with
  forward hooks on the model's own layers (:func:`sparse_mode`), so no model is rewritten.
- Hierarchical decoder: the stage outputs, deepest first, are "densified" (a BatchNorm
  over visible positions, a learned mask token per stage filled in at the masked
  positions, a 1x1 projection for the deepest stage and 3x3 for the others) and fed to a
  UNet-like light decoder: blocks of a 2x transposed convolution and two 3x3
  convolutions (BatchNorm, ReLU6), the width halving at each block, each stage's densified
  map added at the block of its resolution, then a 1x1 convolution to pixels.
- Loss: the mean squared error on the masked patches only, against each patch's pixels
  standardized by the patch's own mean and standard deviation.

Official defaults kept: mask ratio 0.6, random resized crop (0.67-1) and flip as the only
augmentation, per-patch normalized targets, ReLU6 UNet blocks. Where archbench differs:
the decoder's width at the deepest stage is the deepest stage's width (the official
decoder for ResNet-50 is 768 wide for 2048 encoder channels) and does not go below 8;
the densify norm is BatchNorm for every family (the official code uses LayerNorm for
ConvNeXt); layers that the hooks do not see (functional operations inside a block)
keep zeros only when they map zero to zero, as activations and additions do.

Token models (ViT, mixers: ``isotropic``, or stages that output tokens) are refused:
SparK's sparse convolutions have nothing to act on there; use a masked-image method for
token models (MAE-style) or give a CNN.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn as nn

from ..data.transforms import random_resized_crop
from ..train import register_task
from ._pretext import normalize_images, raw_to_float
from .base import SSLTask

__all__ = [
    "LightDecoder",
    "SparK",
    "check_sparse_model",
    "random_active_mask",
    "sparse_intermediates",
    "sparse_mode",
    "spark_loss",
]

_SPARSE_TYPES = (
    nn.Conv2d,
    nn.BatchNorm2d,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.ReLU,
    nn.ReLU6,
    nn.GELU,
    nn.SiLU,
    nn.Identity,
)


def check_sparse_model(model: nn.Module, img_size: int) -> list[int]:
    """The stage reductions of a CNN SparK can use; a clear error for anything else."""
    name = type(model).__name__
    info = list(getattr(model, "feature_info", []) or [])
    if getattr(model, "isotropic", False) or not info:
        raise ValueError(
            f"spark needs a convolutional model with hierarchical stages; {name} is isotropic "
            "(every block at one resolution: a token model such as ViT or Mixer, or ConvMixer), "
            "so there is no hierarchy for the decoder; give a CNN such as resnet_pico or "
            "convnext_pico, or use a masked-image method for token models"
        )
    if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        raise ValueError(f"spark needs a convolutional model; {name} has no Conv2d layer")
    if int(getattr(model, "num_prefix_tokens", 0) or 0) > 0:
        raise ValueError(
            f"spark needs a convolutional model; {name} carries prefix tokens (a token "
            "model); give a CNN such as resnet_pico"
        )
    reductions = [int(f.reduction) for f in info]
    for r in reductions:
        if r < 1 or r & (r - 1):
            raise ValueError(
                f"spark: {name}'s stage reductions {reductions} must be powers of 2 for the "
                "hierarchical decoder"
            )
    if sorted(reductions) != reductions:
        raise ValueError(f"spark: {name}'s stage reductions {reductions} must increase")
    if img_size % reductions[-1]:
        raise ValueError(
            f"spark: image size {img_size} is not a multiple of {name}'s total stride "
            f"{reductions[-1]}; resize the data to a multiple of it"
        )
    with torch.no_grad():
        probe = torch.zeros(1, int(getattr(model, "in_chans", 3)), img_size, img_size)
        was = model.training
        model.eval()
        try:
            outs = model.forward_intermediates(probe)
        finally:
            model.train(was)
    if any(o.ndim != 4 for o in outs):
        raise ValueError(
            f"spark needs stages that output NCHW maps; {name} outputs tokens (a token model); "
            "give a CNN such as resnet_pico"
        )
    return reductions


def random_active_mask(
    batch: int, grid: int, mask_ratio: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(B, 1, grid, grid) bool, True at the ``round(grid^2 (1 - mask_ratio))`` visible
    patches of each image, chosen at random."""
    keep = round(grid * grid * (1 - mask_ratio))
    order = torch.rand(batch, grid * grid, generator=generator).argsort(dim=1)
    active = torch.zeros(batch, grid * grid, dtype=torch.bool)
    active.scatter_(1, order[:, :keep], True)
    return active.view(batch, 1, grid, grid)


def _expand(active: torch.Tensor, h: int, w: int) -> torch.Tensor | None:
    g = active.shape[-1]
    if h < g or h % g or w % g or h // g != w // g:
        return None
    return active.repeat_interleave(h // g, 2).repeat_interleave(w // g, 3)


def _sparse_batch_norm(bn: nn.BatchNorm2d, x: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    """BatchNorm with statistics over the visible positions only (and running statistics
    updated from them); masked positions come out zero."""
    sel = act.expand_as(x).transpose(0, 1).reshape(x.shape[1], -1)
    vals = x.transpose(0, 1).reshape(x.shape[1], -1)
    count = sel.sum(dim=1).clamp_min(1)
    mean = (vals * sel).sum(dim=1) / count
    var = ((vals - mean[:, None]).pow(2) * sel).sum(dim=1) / count
    if bn.track_running_stats and bn.running_mean is not None:
        with torch.no_grad():
            m = bn._spark_momentum
            unbiased = var * count / (count - 1).clamp_min(1)
            bn.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            bn.running_var.mul_(1 - m).add_(unbiased.detach(), alpha=m)
    y = (x - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + bn.eps)
    if bn.affine:
        y = y * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
    return y * act


@contextlib.contextmanager
def sparse_mode(model: nn.Module, active: torch.Tensor) -> Iterator[None]:
    """Within the block, ``model``'s convolution, pooling, normalization and activation
    layers act as sparse ones for the visible positions ``active`` (B, 1, g, g): their
    outputs are zero at masked positions, BatchNorm (in training) uses visible positions."""
    handles = []

    def hook(module: nn.Module, inputs: tuple, output: Any) -> Any:
        if not isinstance(output, torch.Tensor) or output.ndim != 4:
            return None
        act = _expand(active.to(output.device), output.shape[-2], output.shape[-1])
        if act is None:
            return None
        act = act.to(output.dtype)
        if isinstance(module, nn.BatchNorm2d) and module.training:
            return _sparse_batch_norm(module, inputs[0], act)
        return output * act

    saved = []
    for m in model.modules():
        if isinstance(m, _SPARSE_TYPES) or "Norm" in type(m).__name__:
            if isinstance(m, nn.BatchNorm2d) and m.training:
                saved.append((m, m.momentum))
                m._spark_momentum = 0.1 if m.momentum is None else m.momentum
                m.momentum = 0.0  # the dense pass must not touch the running statistics
            handles.append(m.register_forward_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for m, mom in saved:
            m.momentum = mom
            del m._spark_momentum


def sparse_intermediates(
    model: nn.Module, images: torch.Tensor, active: torch.Tensor
) -> list[torch.Tensor]:
    """The stage outputs of ``model`` for ``images`` with only the ``active`` patches
    visible (masked patches zeroed in the input and kept at zero in every layer)."""
    pix = _expand(active, images.shape[-2], images.shape[-1])
    if pix is None:
        raise ValueError(
            f"spark: a {active.shape[-1]}x{active.shape[-1]} mask does not tile "
            f"{tuple(images.shape[-2:])} images"
        )
    with sparse_mode(model, active):
        return model.forward_intermediates(images * pix.to(images.dtype))


class _UNetBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cin, kernel_size=4, stride=2, padding=1)
        self.conv = nn.Sequential(
            nn.Conv2d(cin, cin, 3, padding=1, bias=False),
            nn.BatchNorm2d(cin),
            nn.ReLU6(inplace=True),
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.up(x))


class LightDecoder(nn.Module):
    """SparK's hierarchical decoder with its densifying layers.

    ``stage_channels`` and ``stage_reductions`` list the encoder's stages (shallow to
    deep); the decoder upsamples from the deepest reduction ``R`` to the image in
    ``log2(R)`` 2x blocks, adding each stage's densified map where its resolution is
    reached."""

    def __init__(
        self,
        stage_channels: list[int],
        stage_reductions: list[int],
        width: int,
        out_chans: int,
    ) -> None:
        super().__init__()
        total = stage_reductions[-1]
        n = int(round(math.log2(total)))
        widths = [max(8, width // 2**i) for i in range(n + 1)]
        self.blocks = nn.ModuleList(_UNetBlock(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.proj = nn.Conv2d(widths[-1], out_chans, kernel_size=1)
        # level of each stage: the number of 2x blocks run before its resolution
        self.levels = [n - int(round(math.log2(r))) for r in stage_reductions]
        self.norms = nn.ModuleList(nn.BatchNorm2d(c) for c in stage_channels)
        self.mask_tokens = nn.ParameterList(
            nn.Parameter(torch.zeros(1, c, 1, 1)) for c in stage_channels
        )
        self.projs = nn.ModuleList(
            nn.Conv2d(c, widths[lv], 1 if lv == 0 else 3, padding=0 if lv == 0 else 1)
            for c, lv in zip(stage_channels, self.levels)
        )
        for p in self.mask_tokens:
            nn.init.trunc_normal_(p, std=0.02, a=-0.02, b=0.02)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        return {f"mask_tokens.{i}" for i in range(len(self.mask_tokens))}

    def densify(self, i: int, feat: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        act = _expand(active, feat.shape[-2], feat.shape[-1])
        norm = self.norms[i]
        if norm.training:
            feat = _sparse_norm_plain(norm, feat, act.to(feat.dtype))
        else:
            feat = norm(feat)
        feat = torch.where(act.expand_as(feat), feat, self.mask_tokens[i].expand_as(feat))
        return self.projs[i](feat)

    def forward(self, stages: list[torch.Tensor], active: torch.Tensor) -> torch.Tensor:
        dense = {}
        for i, feat in enumerate(stages):
            dense.setdefault(self.levels[i], []).append(self.densify(i, feat, active))
        x: torch.Tensor | int = 0
        for lv, block in enumerate(self.blocks):
            for d in dense.get(lv, []):
                x = x + d
            x = block(x)
        for d in dense.get(len(self.blocks), []):
            x = x + d
        return self.proj(x)


def _sparse_norm_plain(bn: nn.BatchNorm2d, x: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    """The densify BatchNorm over visible positions (its own running statistics)."""
    bn._spark_momentum = 0.1 if bn.momentum is None else bn.momentum
    try:
        return _sparse_batch_norm(bn, x, act)
    finally:
        del bn._spark_momentum


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, L, patch * patch * C), patches in row-major order."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), -1)


def spark_loss(
    recon: torch.Tensor, images: torch.Tensor, active: torch.Tensor, patch: int
) -> torch.Tensor:
    """Mean over masked patches of the MSE to the patch's standardized pixels."""
    target = patchify(images.float(), patch)
    mean = target.mean(dim=-1, keepdim=True)
    std = (target.var(dim=-1, keepdim=True) + 1e-6) ** 0.5
    target = (target - mean) / std
    err = (patchify(recon.float(), patch) - target).pow(2).mean(dim=-1)
    masked = (~active).view(active.shape[0], -1).float()
    return (err * masked).sum() / masked.sum().clamp_min(1e-8)


@register_task("spark")
class SparK(SSLTask):
    """SparK: sparse masked modeling of a CNN with a hierarchical decoder."""

    views = 1

    def __init__(self, mask_ratio: float = 0.6, decoder_width: int = 0) -> None:
        super().__init__()
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"spark: mask_ratio must be in (0, 1), got {mask_ratio}")
        if decoder_width < 0:
            raise ValueError(
                f"spark: decoder_width must be >= 0 (0: automatic), got {decoder_width}"
            )
        self.mask_ratio = mask_ratio
        self.decoder_width = decoder_width
        self.total_stride = 1

    def check(self, model: nn.Module, data: Any) -> None:
        super().check(model, data)
        check_sparse_model(model, int(data.img_size))

    def setup(self, model: nn.Module, data: Any, recipe: Any) -> None:
        super().setup(model, data, recipe)
        reductions = check_sparse_model(model, int(data.img_size))
        channels = [int(f.num_chs) for f in model.feature_info]
        self.total_stride = reductions[-1]
        width = self.decoder_width or channels[-1]
        self.trainable["decoder"] = LightDecoder(channels, reductions, width, int(data.in_chans))

    def loss(self, images: torch.Tensor, state: Any) -> torch.Tensor:
        grid = images.shape[-1] // self.total_stride
        active = random_active_mask(images.shape[0], grid, self.mask_ratio).to(images.device)
        stages = sparse_intermediates(state.model, images, active)
        recon = self.trainable["decoder"](stages, active)
        return spark_loss(recon, images, active, self.total_stride)

    def step(self, batch: Any, state: Any) -> dict[str, Any]:
        x = random_resized_crop(raw_to_float(batch.raw), batch.raw.shape[-1], scale=(0.67, 1.0))
        return {"loss": self.loss(normalize_images(x, state.data), state)}

    def eval_step(self, batch: Any, state: Any) -> dict[str, float]:
        return {"loss": float(self.loss(batch.images, state))}
