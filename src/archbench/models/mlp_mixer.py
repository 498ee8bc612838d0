"""MLP-Mixer (*MLP-Mixer: An all-MLP Architecture for Vision*, Tolstikhin et al., 2021).

Patches are linearly embedded (a strided convolution, as in ViT), then each Mixer layer
applies two pre-LayerNorm residual MLPs: a token-mixing MLP that acts on each channel
across the patches (weights shared over channels) and a channel-mixing MLP that acts on
each patch across the channels (weights shared over patches). GELU in both MLPs; a final
LayerNorm, global average pooling over patches and a linear head. No class token and no
position embedding: the token-mixing MLP itself is position-aware, which ties a model
to the patch count it was built for (``fixed_input_size``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..layers import DropPath, Mlp, PatchEmbed, drop_path_rates
from ..layers.helpers import to_2tuple
from ._base import FeatureInfo, ImageClassifier
from ._registry import ModelCard, build_model, register_model

__all__ = ["MixerBlock", "MlpMixer"]


class MixerBlock(nn.Module):
    """x + token_mlp(LN(x)^T)^T, then x + channel_mlp(LN(x)), on (B, N, C) tokens."""

    def __init__(
        self,
        dim: int,
        num_tokens: int,
        tokens_mlp_dim: int,
        channels_mlp_dim: int,
        drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp_tokens = Mlp(num_tokens, tokens_mlp_dim, act="gelu", drop=drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp_channels = Mlp(dim, channels_mlp_dim, act="gelu", drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.mlp_tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2))
        return x + self.drop_path(self.mlp_channels(self.norm2(x)))


class MlpMixer(ImageClassifier):
    """Patch embedding, ``depth`` Mixer layers, LayerNorm, mean over patches, linear head."""

    width_args = ("embed_dim", "tokens_mlp_dim", "channels_mlp_dim")
    depth_args = ("depth",)
    isotropic = True  # feature_info lists every block

    def __init__(
        self,
        patch_size: int = 16,
        embed_dim: int = 512,
        depth: int = 8,
        tokens_mlp_dim: int = 256,
        channels_mlp_dim: int = 2048,
        proj_drop_rate: float = 0.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int | tuple[int, int] = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        size = to_2tuple(img_size)
        for side in size:
            if side <= 0 or side % patch_size:
                lower = max(patch_size, side // patch_size * patch_size)
                raise ValueError(
                    f"MlpMixer: img_size {img_size} cannot be tiled by {patch_size}x{patch_size} "
                    f"patches; each side must be a multiple of {patch_size} "
                    f"(nearest valid: {lower} or {lower + patch_size})"
                )
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.num_features = embed_dim
        self.fixed_input_size = size
        self.img_size_multiple = patch_size  # the sizes its constructor accepts
        self.stem = PatchEmbed(size, patch_size, in_chans, embed_dim)
        num_tokens = self.stem.num_patches
        dprs = drop_path_rates(drop_path_rate, [depth])[0]
        self.blocks = nn.Sequential(
            *[
                MixerBlock(
                    embed_dim, num_tokens, tokens_mlp_dim, channels_mlp_dim, proj_drop_rate, dprs[i]
                )
                for i in range(depth)
            ]
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = [
            FeatureInfo(embed_dim, patch_size, f"blocks.{i}") for i in range(depth)
        ]
        self.cam_target = f"blocks.{depth - 1}"
        self._init_weights()

    def _init_weights(self) -> None:
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                if name == "head":
                    nn.init.zeros_(m.weight)
                else:
                    nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.normal_(m.bias, std=1e-6) if "mlp" in name else nn.init.zeros_(m.bias)

    def tokens_to_map(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.ndim == 4:
            return tokens
        gh, gw = self.stem.grid_size
        if tokens.ndim != 3 or tokens.shape[1] != gh * gw:
            raise ValueError(
                f"expected tokens of shape (B, {gh * gw}, C), got {tuple(tokens.shape)}"
            )
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], gh, gw)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.norm(self.blocks(self.stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x.mean(dim=1))
        return x if pre_logits else self.head(x)


def _mixer(defaults: dict[str, Any], kwargs: dict[str, Any]) -> MlpMixer:
    return build_model(MlpMixer, defaults, kwargs)


_PAPER = "MLP-Mixer: An all-MLP Architecture for Vision"


@register_model(
    ModelCard(
        "mlp_mixer",
        _PAPER,
        2021,
        "mlp",
        params_m=18.528,
        gmacs=3.8,
        source="paper Table 1 (S/16: 18M, 8 layers, width 512, D_S 256, D_C 2048); "
        "exact count of the official google-research/vision_transformer release (18,528,264)",
    )
)
def mixer_s16_224(**kwargs: Any) -> MlpMixer:
    return _mixer(
        dict(patch_size=16, embed_dim=512, depth=8, tokens_mlp_dim=256, channels_mlp_dim=2048),
        kwargs,
    )


@register_model(
    ModelCard(
        "mlp_mixer",
        _PAPER,
        2021,
        "mlp",
        params_m=59.880,
        gmacs=12.6,
        top1=76.44,
        source="paper Table 1 (B/16: 59M, 12 layers, width 768, D_S 384, D_C 3072) and "
        "Table 2 (76.44 top-1, ImageNet-1k only); exact count of the official release "
        "(59,880,472)",
    )
)
def mixer_b16_224(**kwargs: Any) -> MlpMixer:
    return _mixer(
        dict(patch_size=16, embed_dim=768, depth=12, tokens_mlp_dim=384, channels_mlp_dim=3072),
        kwargs,
    )


@register_model(ModelCard("mlp_mixer", _PAPER, 2021, "mlp", scale="cpu", img_size=32))
def mixer_pico(**kwargs: Any) -> MlpMixer:
    """Patch 4 at 32x32 (64 tokens), width 128, 6 layers, D_S 64, D_C 512."""
    return _mixer(
        dict(
            patch_size=4,
            embed_dim=128,
            depth=6,
            tokens_mlp_dim=64,
            channels_mlp_dim=512,
            img_size=32,
        ),
        kwargs,
    )
