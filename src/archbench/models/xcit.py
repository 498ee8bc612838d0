"""XCiT: Cross-Covariance Image Transformers.

*XCiT: Cross-Covariance Image Transformers* (El-Nouby et al., 2021). A convolutional
patch embedding (stride-2 3x3 conv + BatchNorm layers, GELU between), Fourier position
features projected by a 1x1 conv, then XCA blocks: cross-covariance attention
(``CrossCovarianceAttention``, linear in the number of tokens), local patch interaction
(two depthwise 3x3 convs with GELU and BatchNorm between) and an MLP, each residual
scaled by a LayerScale. Two class-attention layers (CaiT) then read the patches into a
class token. Position features are computed from the grid and the patch embedding is a
stack of padded stride-2 convolutions, so any input size works.

In a class-attention layer the patch tokens are carried through unchanged (after the
optional ``tokens_norm``). The official code's residual adds them to themselves (doubling
them); every later reader of those tokens starts with a LayerNorm, so the class token and
the logits are the same either way (up to the LayerNorm epsilon).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from ..layers import DropPath, Mlp
from ..layers.attention_variants import ClassAttention, CrossCovarianceAttention
from ._base import FeatureInfo, ImageClassifier, check_img_size
from ._registry import ModelCard, build_model, register_model

__all__ = ["XCiT", "fourier_features"]


def fourier_features(
    h: int,
    w: int,
    hidden_dim: int = 32,
    temperature: float = 10000.0,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Sine/cosine features of normalised (y, x) positions, shape (1, 2 * hidden_dim, h, w)."""
    eps, scale = 1e-6, 2 * math.pi
    y = torch.arange(1, h + 1, dtype=torch.float32, device=device)[:, None].expand(h, w)
    x = torch.arange(1, w + 1, dtype=torch.float32, device=device)[None, :].expand(h, w)
    y = y / (h + eps) * scale
    x = x / (w + eps) * scale
    i = torch.arange(hidden_dim, dtype=torch.float32, device=device)
    dim_t = temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / hidden_dim)

    def encode(p: torch.Tensor) -> torch.Tensor:
        p = p[..., None] / dim_t
        return torch.stack([p[..., 0::2].sin(), p[..., 1::2].cos()], dim=-1).flatten(-2)

    return torch.cat([encode(y), encode(x)], dim=-1).permute(2, 0, 1)[None]


class FourierPositionEncoding(nn.Module):
    """Fourier features of the grid projected to ``dim`` by a 1x1 convolution (XCiT)."""

    def __init__(self, dim: int, hidden_dim: int = 32) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.token_projection = nn.Conv2d(hidden_dim * 2, dim, 1)

    def forward(self, h: int, w: int) -> torch.Tensor:
        w_ = self.token_projection.weight
        feats = fourier_features(h, w, self.hidden_dim, device=w_.device).to(w_.dtype)
        return self.token_projection(feats).flatten(2).transpose(1, 2)  # (1, HW, C)


class ConvPatchEmbed(nn.Module):
    """log2(patch) stride-2 3x3 conv + BN layers with GELU between (widths double to dim)."""

    def __init__(self, in_chans: int, dim: int, patch_size: int) -> None:
        super().__init__()
        n = int(math.log2(patch_size))
        if 2**n != patch_size or n < 1:
            raise ValueError(f"XCiT patch_size must be a power of two >= 2, got {patch_size}")
        layers: list[nn.Module] = []
        cin = in_chans
        for i in range(n):
            cout = dim // 2 ** (n - 1 - i)
            if i:
                layers.append(nn.GELU())
            layers += [nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout)]
            cin = cout
        self.proj = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class LocalPatchInteraction(nn.Module):
    """LPI: depthwise 3x3 conv -> GELU -> BatchNorm -> depthwise 3x3 conv on the grid."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.act = nn.GELU()
        self.bn = nn.BatchNorm2d(dim)
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        b, n, c = x.shape
        x = x.transpose(1, 2).reshape(b, c, hw[0], hw[1])
        x = self.conv2(self.bn(self.act(self.conv1(x))))
        return x.flatten(2).transpose(1, 2)


class XCABlock(nn.Module):
    """XCA, then LPI, then MLP, each pre-norm with LayerScale (XCiT)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        drop: float,
        drop_path: float,
        eta: float,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = CrossCovarianceAttention(dim, num_heads, qkv_bias, proj_drop=drop)
        self.norm3 = nn.LayerNorm(dim, eps=1e-6)
        self.local_mp = LocalPatchInteraction(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.gamma1 = nn.Parameter(eta * torch.ones(dim))
        self.gamma3 = nn.Parameter(eta * torch.ones(dim))
        self.gamma2 = nn.Parameter(eta * torch.ones(dim))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path(self.gamma1 * self.attn(self.norm1(x)))
        x = x + self.drop_path(self.gamma3 * self.local_mp(self.norm3(x), hw))
        return x + self.drop_path(self.gamma2 * self.mlp(self.norm2(x)))


class ClassAttentionBlock(nn.Module):
    """CaiT class-attention layer: only the class token is updated (attention + MLP)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        drop: float,
        eta: float,
        tokens_norm: bool,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = ClassAttention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.gamma1 = nn.Parameter(eta * torch.ones(dim))
        self.gamma2 = nn.Parameter(eta * torch.ones(dim))
        self.tokens_norm = tokens_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xn = self.norm1(x)
        # the patch tokens receive their normalised selves as the "attention" update
        x = x + self.gamma1 * torch.cat([self.attn(xn), xn[:, 1:]], dim=1)
        if self.tokens_norm:
            x = self.norm2(x)
        else:
            x = torch.cat([self.norm2(x[:, :1]), x[:, 1:]], dim=1)
        cls = x[:, :1] + self.gamma2 * self.mlp(x[:, :1])
        return torch.cat([cls, x[:, 1:]], dim=1)


class XCiT(ImageClassifier):
    """Isotropic XCiT with two class-attention layers."""

    width_args = ("embed_dim",)
    depth_args = ("depth",)
    isotropic = True  # feature_info lists every block

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int | tuple[int, int] = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        patch_size: int = 16,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        cls_attn_layers: int = 2,
        eta: float = 1.0,
        tokens_norm: bool = True,
    ) -> None:
        super().__init__()
        check_img_size(img_size, 1, "XCiT")
        self.num_classes, self.in_chans, self.num_features = num_classes, in_chans, embed_dim
        self.num_prefix_tokens = 1
        # padded strided layers map any input size onto the stages: no size constraint
        self.patch_embed = ConvPatchEmbed(in_chans, embed_dim, patch_size)
        self.pos_embed = FourierPositionEncoding(embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.pos_drop = nn.Dropout(drop_rate)
        # XCiT uses the same stochastic-depth rate in every block
        self.blocks = nn.ModuleList(
            XCABlock(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, drop_path_rate, eta)
            for _ in range(depth)
        )
        self.cls_attn_blocks = nn.Sequential(
            *(
                ClassAttentionBlock(
                    embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, eta, tokens_norm
                )
                for _ in range(cls_attn_layers)
            )
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        # one entry per XCA block (their outputs carry no class token; it joins for the
        # class-attention layers, which leave the patch tokens unchanged)
        self.feature_info = [
            FeatureInfo(embed_dim, patch_size, f"blocks.{i}") for i in range(depth)
        ]
        self.cam_target = f"blocks.{depth - 1}"

    def tokens_to_map(self, tokens: torch.Tensor) -> torch.Tensor:
        # block outputs carry no class token (it joins before class attention)
        if tokens.ndim == 3 and math.isqrt(tokens.shape[1]) ** 2 == tokens.shape[1]:
            n, c = tokens.shape[1], tokens.shape[2]
            side = math.isqrt(n)
            return tokens.transpose(1, 2).reshape(tokens.shape[0], c, side, side)
        return super().tokens_to_map(tokens)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.patch_embed(x)
        b, _, h, w = x.shape
        x = x.flatten(2).transpose(1, 2) + self.pos_embed(h, w)
        x = self.pos_drop(x)
        for blk in self.blocks:
            x = blk(x, (h, w))
        x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1)
        return self.norm(self.cls_attn_blocks(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x[:, 0])
        return x if pre_logits else self.head(x)

    def no_weight_decay(self) -> set[str]:
        return {"cls_token"} | {n for n, _ in self.named_parameters() if n.endswith("temperature")}


_PAPER = "XCiT: Cross-Covariance Image Transformers"
_SRC = (
    "paper Table 1 (top-1 77.1 / 82.0; params rounded to 7M / 26M); exact counts of the "
    "released weights from mmpretrain configs/xcit/README.md (6.72M / 26.25M, 1.24 / 4.81 GFLOPs)"
)


@register_model(
    ModelCard("xcit", _PAPER, 2021, "vit", params_m=6.72, gmacs=1.24, top1=77.1, source=_SRC)
)
def xcit_tiny_12_p16(**kwargs: Any) -> XCiT:
    return build_model(XCiT, dict(embed_dim=192, depth=12, num_heads=4, eta=1.0), kwargs)


@register_model(
    ModelCard("xcit", _PAPER, 2021, "vit", params_m=26.25, gmacs=4.81, top1=82.0, source=_SRC)
)
def xcit_small_12_p16(**kwargs: Any) -> XCiT:
    return build_model(XCiT, dict(embed_dim=384, depth=12, num_heads=8, eta=1.0), kwargs)


@register_model(
    ModelCard(
        "xcit",
        _PAPER,
        2021,
        "vit",
        scale="cpu",
        img_size=32,
        notes="patch 4 (two stride-2 convs): an 8x8 token grid at 32x32",
    )
)
def xcit_pico(**kwargs: Any) -> XCiT:
    return build_model(
        XCiT,
        dict(img_size=32, patch_size=4, embed_dim=96, depth=4, num_heads=4, mlp_ratio=3.0),
        kwargs,
    )
