"""Vision Transformer and DeiT, with and without the distillation token.

*An Image is Worth 16x16 Words* (Dosovitskiy et al., 2021): non-overlapping patches are
linearly embedded, a learned class token is prepended, a learned absolute position
embedding is added, and a stack of pre-norm transformer blocks is followed by a final
LayerNorm; the class token's output feeds a linear head. The Ti and S widths come from
*Training data-efficient image transformers & distillation through attention* (DeiT,
Touvron et al., 2021), which trains the same architecture on ImageNet-1k alone.

DeiT's distilled models add a second learned token (the distillation token) and a second
linear head on its output. At evaluation the two heads' logits are averaged. During
distillation training both are needed (the class head against the labels, the
distillation head against the teacher); archbench keeps the plain contract
(``forward(x)`` returns one tensor) and gives both only on request: call
``model.set_distilled_training(True)`` and, while the model is in training mode,
``forward`` returns the tuple ``(class_logits, distillation_logits)``.

The position embedding covers the grid the model was built for; ``fixed_input_size``
makes any other input an error. To move weights to another resolution, rebuild at the
new ``img_size`` and pass the old state dict through ``adapt_state_dict`` (which calls
``resample_pos_embed``: bicubic interpolation of the patch part, prefix tokens kept).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..layers import PatchEmbed, TransformerBlock, drop_path_rates
from ..layers.conv_attention import RelPosAttention
from ..layers.helpers import init_trunc_normal_linear, to_2tuple
from ..layers.pos_embed import resample_pos_embed
from ._base import FeatureInfo, ImageClassifier
from ._registry import ModelCard, build_model, register_model

__all__ = [
    "DistilledVisionTransformer",
    "VisionTransformer",
    "adapt_state_dict",
    "resample_pos_embed",
]


def _valid_sizes_hint(size: int, patch: int) -> str:
    lower = max(patch, size // patch * patch)
    upper = (size // patch + 1) * patch
    return f"{lower} or {upper}" if lower != upper else str(lower)


def adapt_state_dict(
    state_dict: dict[str, torch.Tensor], model: VisionTransformer
) -> dict[str, torch.Tensor]:
    """Return a copy of ``state_dict`` whose ``pos_embed`` fits ``model``'s patch grid."""
    out = dict(state_dict)
    if "pos_embed" in out:
        pe = out["pos_embed"]
        npt = model.num_prefix_tokens
        if pe.shape[1] != model.pos_embed.shape[1]:
            out["pos_embed"] = resample_pos_embed(pe, model.patch_embed.grid_size, None, npt)
    return out


class VisionTransformer(ImageClassifier):
    """ViT / DeiT: patch embedding, class token, learned positions, pre-norm blocks, LN, head.

    ``drop_rate`` is the dropout before the head; ``proj_drop_rate`` / ``pos_drop_rate`` /
    ``attn_drop_rate`` are the dropouts inside the blocks, after the position embedding
    and on the attention weights (the ViT paper's "dropout" is the first two).

    ``init="conv"`` (*Can Vision Transformers Perform Convolution?*, Li et al., 2021) gives
    every block's attention a learned relative-position bias and initialises it to emulate
    a ``conv_init_kernel`` x ``conv_init_kernel`` convolution of the patch grid, one head
    per kernel offset (so ``num_heads`` must be at least ``conv_init_kernel ** 2``); see
    ``archbench.layers.conv_attention``.
    """

    width_args = ("embed_dim",)
    depth_args = ("depth",)
    isotropic = True  # feature_info lists every block

    def __init__(
        self,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        init_values: float | None = None,
        pos_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int | tuple[int, int] = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        init: str = "default",
        conv_init_kernel: int = 3,
    ) -> None:
        super().__init__()
        size = to_2tuple(img_size)
        if init not in ("default", "conv"):
            raise ValueError(f"init must be 'default' or 'conv', got {init!r}")
        if patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}")
        for side in size:
            if side <= 0 or side % patch_size:
                raise ValueError(
                    f"{type(self).__name__}: img_size {img_size} cannot be tiled by "
                    f"{patch_size}x{patch_size} patches; each side must be a multiple of "
                    f"{patch_size} (nearest valid: {_valid_sizes_hint(side, patch_size)})"
                )
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.num_features = self.embed_dim = embed_dim
        self.fixed_input_size = size
        self.img_size_multiple = patch_size
        self.rebuild_note = (
            "and move the weights with archbench.models.vit.adapt_state_dict "
            "(it resamples the position embedding)"
        )
        self.num_prefix_tokens = 1 + int(self._distilled)

        self.patch_embed = PatchEmbed(size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        if self._distilled:
            self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        num_pos = self.num_prefix_tokens + self.patch_embed.num_patches
        self.pos_embed = nn.Parameter(torch.zeros(1, num_pos, embed_dim))
        self.pos_drop = nn.Dropout(pos_drop_rate)
        dprs = drop_path_rates(drop_path_rate, [depth])[0]
        self.blocks = nn.Sequential(
            *[
                TransformerBlock(
                    embed_dim,
                    num_heads,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    drop=proj_drop_rate,
                    attn_drop=attn_drop_rate,
                    drop_path=dprs[i],
                    init_values=init_values,
                )
                for i in range(depth)
            ]
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._build_extra_heads(num_classes)

        self.feature_info = [
            FeatureInfo(embed_dim, patch_size, f"blocks.{i}") for i in range(depth)
        ]
        # the last block's output reaches the head only through the class token, so
        # explanations hook the input of its token mixing instead
        self.cam_target = f"blocks.{depth - 1}.norm1"
        if init == "conv":
            grid = self.patch_embed.grid_size
            for blk in self.blocks:
                blk.attn = RelPosAttention.from_attention(blk.attn, grid, self.num_prefix_tokens)
        self._init_weights()
        if init == "conv":
            for blk in self.blocks:
                blk.attn.init_as_convolution(conv_init_kernel)

    _distilled = False

    def _build_extra_heads(self, num_classes: int) -> None:
        pass

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if self._distilled:
            nn.init.trunc_normal_(self.dist_token, std=0.02)
        self.apply(init_trunc_normal_linear)

    # ----- input and tokens --------------------------------------------------------
    def prefix_tokens(self, batch: int) -> torch.Tensor:
        tokens = [self.cls_token]
        if self._distilled:
            tokens.append(self.dist_token)
        return torch.cat(tokens, dim=1).expand(batch, -1, -1)

    def tokens_to_map(self, tokens: torch.Tensor) -> torch.Tensor:
        """Drop the class (and distillation) token and fold the rest into the patch grid."""
        if tokens.ndim == 4:
            return tokens
        if tokens.ndim != 3:
            raise ValueError(f"expected tokens of shape (B, N, C), got {tuple(tokens.shape)}")
        gh, gw = self.patch_embed.grid_size
        spatial = tokens[:, self.num_prefix_tokens :]
        if spatial.shape[1] != gh * gw:
            raise ValueError(
                f"expected {self.num_prefix_tokens} prefix + {gh * gw} patch tokens, "
                f"got {tokens.shape[1]} tokens"
            )
        return spatial.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], gh, gw)

    def no_weight_decay(self) -> set[str]:
        names = {"pos_embed", "cls_token"}
        if self._distilled:
            names.add("dist_token")
        return names

    # ----- forward -----------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.patch_embed(x)
        x = torch.cat([self.prefix_tokens(x.shape[0]), x], dim=1)
        x = self.pos_drop(x + self.pos_embed)
        return self.norm(self.blocks(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x[:, 0])
        return x if pre_logits else self.head(x)


class DistilledVisionTransformer(VisionTransformer):
    """DeiT with a distillation token and a second head (``head_dist``).

    ``forward`` returns the average of the two heads' logits, except in training mode
    after ``set_distilled_training(True)``, where it returns ``(logits, logits_dist)``.
    """

    _distilled = True
    distilled_training = False

    def _build_extra_heads(self, num_classes: int) -> None:
        self.head_dist = (
            nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        )

    def set_distilled_training(self, enable: bool = True) -> None:
        """Make ``forward`` return both heads' logits while the model is in training mode."""
        self.distilled_training = bool(enable)

    def forward_distill(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(class-head logits, distillation-head logits)`` of images ``x``, in any mode."""
        feats = self.forward_features(x)
        return self.head(self.head_drop(feats[:, 0])), self.head_dist(self.head_drop(feats[:, 1]))

    def reset_classifier(self, num_classes: int) -> None:
        super().reset_classifier(num_classes)
        self.head_dist = (
            nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        )

    def forward_head(
        self, x: torch.Tensor, pre_logits: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x_cls, x_dist = self.head_drop(x[:, 0]), self.head_drop(x[:, 1])
        if pre_logits:
            return (x_cls + x_dist) / 2
        logits, logits_dist = self.head(x_cls), self.head_dist(x_dist)
        if self.training and self.distilled_training:
            return logits, logits_dist
        return (logits + logits_dist) / 2


def _vit(defaults: dict[str, Any], kwargs: dict[str, Any]) -> VisionTransformer:
    return build_model(VisionTransformer, defaults, kwargs)


def _deit_distilled(defaults: dict[str, Any], kwargs: dict[str, Any]) -> VisionTransformer:
    return build_model(DistilledVisionTransformer, defaults, kwargs)


_VIT = "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale"
_DEIT = "Training data-efficient image transformers & distillation through attention"
_TI = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3)
_S = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6)
_B = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12)
_REL = "exact count of the official DeiT / timm release"


@register_model(
    ModelCard(
        "vit",
        _VIT,
        2021,
        "vit",
        params_m=5.717,
        gmacs=1.3,
        source=f"Ti size defined in DeiT Table 1 (5M); {_REL} (5,717,416)",
    )
)
def vit_tiny_patch16_224(**kwargs: Any) -> VisionTransformer:
    return _vit(dict(_TI), kwargs)


@register_model(
    ModelCard(
        "vit",
        _VIT,
        2021,
        "vit",
        params_m=22.051,
        gmacs=4.6,
        source=f"S size defined in DeiT Table 1 (22M); {_REL} (22,050,664)",
    )
)
def vit_small_patch16_224(**kwargs: Any) -> VisionTransformer:
    return _vit(dict(_S), kwargs)


@register_model(
    ModelCard(
        "vit",
        _VIT,
        2021,
        "vit",
        params_m=86.568,
        gmacs=17.6,
        source=f"ViT paper Table 1 (ViT-Base, 86M); {_REL} (86,567,656)",
    )
)
def vit_base_patch16_224(**kwargs: Any) -> VisionTransformer:
    return _vit(dict(_B), kwargs)


@register_model(
    ModelCard(
        "deit",
        _DEIT,
        2021,
        "vit",
        params_m=5.717,
        gmacs=1.3,
        top1=72.2,
        source=f"DeiT Table 1 (5M, 72.2 top-1); {_REL} (5,717,416)",
    )
)
def deit_tiny_patch16_224(**kwargs: Any) -> VisionTransformer:
    return _vit(dict(_TI), kwargs)


@register_model(
    ModelCard(
        "deit",
        _DEIT,
        2021,
        "vit",
        params_m=22.051,
        gmacs=4.6,
        top1=79.8,
        source=f"DeiT Table 1 (22M, 79.8 top-1); {_REL} (22,050,664)",
    )
)
def deit_small_patch16_224(**kwargs: Any) -> VisionTransformer:
    return _vit(dict(_S), kwargs)


@register_model(
    ModelCard(
        "deit",
        _DEIT,
        2021,
        "vit",
        params_m=86.568,
        gmacs=17.6,
        top1=81.8,
        source=f"DeiT Table 1 (86M, 81.8 top-1); {_REL} (86,567,656)",
    )
)
def deit_base_patch16_224(**kwargs: Any) -> VisionTransformer:
    return _vit(dict(_B), kwargs)


@register_model(
    ModelCard(
        "deit",
        _DEIT,
        2021,
        "vit",
        params_m=5.911,
        gmacs=1.3,
        top1=74.5,
        source=f"DeiT Table 5 (distilled Ti, 300 epochs, 74.5 top-1); {_REL} (5,910,800)",
    )
)
def deit_tiny_distilled_patch16_224(**kwargs: Any) -> DistilledVisionTransformer:
    return _deit_distilled(dict(_TI), kwargs)


@register_model(
    ModelCard(
        "deit",
        _DEIT,
        2021,
        "vit",
        params_m=22.436,
        gmacs=4.6,
        top1=81.2,
        source=f"DeiT Table 5 (distilled S, 300 epochs, 81.2 top-1); {_REL} (22,436,432)",
    )
)
def deit_small_distilled_patch16_224(**kwargs: Any) -> DistilledVisionTransformer:
    return _deit_distilled(dict(_S), kwargs)


@register_model(
    ModelCard(
        "deit",
        _DEIT,
        2021,
        "vit",
        params_m=87.338,
        gmacs=17.7,
        top1=83.4,
        source=f"DeiT Table 5 (distilled B, 300 epochs, 83.4 top-1); {_REL} (87,338,192)",
    )
)
def deit_base_distilled_patch16_224(**kwargs: Any) -> DistilledVisionTransformer:
    return _deit_distilled(dict(_B), kwargs)


_PICO = dict(patch_size=4, embed_dim=128, depth=6, num_heads=4, mlp_ratio=2.0, img_size=32)


@register_model(ModelCard("vit", _VIT, 2021, "vit", scale="cpu", img_size=32))
def vit_pico(**kwargs: Any) -> VisionTransformer:
    """Patch 4 at 32x32 (an 8x8 grid of 64 tokens), width 128, 6 blocks of 4 heads."""
    return _vit(dict(_PICO), kwargs)


@register_model(ModelCard("deit", _DEIT, 2021, "vit", scale="cpu", img_size=32))
def deit_pico_distilled(**kwargs: Any) -> DistilledVisionTransformer:
    """``vit_pico`` with DeiT's distillation token and second head."""
    return _deit_distilled(dict(_PICO), kwargs)
