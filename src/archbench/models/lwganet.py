"""LWGANet: a light-weight backbone built on the Light-Weight Group Attention (LWGA) module.

*LWGANet: A Lightweight Group Attention Backbone for Remote Sensing Visual Tasks* (Lu,
Chen, Ding, Tang & Luo, 2025). Architecture of the official release
(AeroVILab-AHU/LWGANet, ``classification/models/LWGANet.py``):

- stem: 4x4/4 patchify conv + BN; between stages the DRFD downsampling (3x3 conv to 2C in
  groups of one input channel, then in parallel a 3x3/2 depthwise conv -> act -> BN and a
  3x3/2 max pool -> BN, concatenated and fused by a 1x1 conv);
- an LWGA block splits its channels into four groups of C/4, one branch per scale:
  **point attention** (PA, ``x + x * sigmoid(1x1-BN-act-1x1(x))``), **local attention**
  (LA, 3x3 conv-BN-act), **medium-range attention** (MRA: 3x3 max pool, a 4-tap blur pool of
  stride 3, four depthwise strip convolutions (k x 3 and 3 x k, on the map and on its
  row/column-sheared copy, i.e. along both diagonals), BN, a sigmoid gate upsampled to the
  input by nearest neighbour) and **global attention**, which depends on the stage: in
  stages 1-2 a large-kernel selective attention on the 2x2-max-pooled map (5x5 and 7x7
  dilation-3 depthwise convs, selected by a sigmoid over the channel mean and max, then
  max-unpooled), in stage 3 multi-head self-attention (head width 4) on the max-pooled map,
  in stage 4 multi-head self-attention at full resolution. The four groups are
  concatenated, pass an MLP (1x1 2x, BN, act, 1x1) and a BN, and are added to the input;
- head: global average pool, 1x1 conv to 1280 (no bias), act, linear.

L0 and L1 use GELU, L2 ReLU, as in the release. The blur pool (antialiased_cnns'
``BlurPool``: [1, 3, 3, 1] outer product, reflect padding) is written here, so the
package does not depend on antialiased_cnns. Where archbench departs from the release:
the row/column shear is written for any H x W (the release's reshape only works on
square maps); the max-unpool is given the input size, so odd-sized maps work too.
``stem_patch`` (the patchify size, 4 in the release) lets CPU variants keep 32x32 inputs
large enough for the blur pool's reflect padding in the last stage.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import DropPath, drop_path_rates
from ._base import FeatureInfo, ImageClassifier, to_2tuple
from ._registry import ModelCard, build_model, register_model

__all__ = ["LWGABlock", "LWGANet", "shear_rows", "unshear_rows"]

_ACTS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "relu": nn.ReLU}


def shear_rows(x: torch.Tensor) -> torch.Tensor:
    """Shift row ``i`` right by ``i``: (..., H, W) -> (..., H, W + H - 1), zeros elsewhere.

    ``out[..., i, i + j] = x[..., i, j]``: a vertical strip convolution on the sheared map
    runs along the diagonal of the original one.
    """
    *lead, h, w = x.shape
    flat = F.pad(x, (0, h)).flatten(-2)[..., : h * (w + h - 1)]
    return flat.reshape(*lead, h, w + h - 1)


def unshear_rows(x: torch.Tensor, width: int) -> torch.Tensor:
    """Inverse of :func:`shear_rows`: ``out[..., i, j] = x[..., i, i + j]`` for ``j < width``."""
    *lead, h, _ = x.shape
    flat = F.pad(x.flatten(-2), (0, h))
    return flat.reshape(*lead, h, width + h)[..., :width]


def _shear_cols(x: torch.Tensor) -> torch.Tensor:
    return shear_rows(x.transpose(-1, -2)).transpose(-1, -2)


def _unshear_cols(x: torch.Tensor, height: int) -> torch.Tensor:
    return unshear_rows(x.transpose(-1, -2), height).transpose(-1, -2)


class BlurPool(nn.Module):
    """Anti-aliased downsampling (Zhang, 2019): reflect pad, fixed 4x4 binomial blur, stride."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        a = torch.tensor([1.0, 3.0, 3.0, 1.0])
        filt = a[:, None] * a[None, :]
        self.stride = stride
        self.register_buffer("filt", (filt / filt.sum()).expand(channels, 1, 4, 4).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (1, 2, 1, 2), mode="reflect")
        return F.conv2d(x, self.filt, stride=self.stride, groups=x.shape[1])


class PointAttention(nn.Module):
    """PA: a per-pixel sigmoid gate from a 1x1 -> BN -> act -> 1x1 bottleneck (4x)."""

    def __init__(self, dim: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.p_conv = nn.Sequential(
            nn.Conv2d(dim, dim * 4, 1, bias=False),
            nn.BatchNorm2d(dim * 4),
            act(),
            nn.Conv2d(dim * 4, dim, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.p_conv(x))


class MediumRangeAttention(nn.Module):
    """MRA: strip convolutions in four directions on a 3x-downsampled map gate the input."""

    def __init__(self, dim: int, att_kernel: int) -> None:
        super().__init__()
        p = att_kernel // 2
        self.max_m1 = nn.MaxPool2d(3, stride=1, padding=1)
        self.max_m2 = BlurPool(dim, stride=3)
        self.H_att1 = nn.Conv2d(dim, dim, (att_kernel, 3), 1, (p, 1), groups=dim, bias=False)
        self.V_att1 = nn.Conv2d(dim, dim, (3, att_kernel), 1, (1, p), groups=dim, bias=False)
        self.H_att2 = nn.Conv2d(dim, dim, (att_kernel, 3), 1, (p, 1), groups=dim, bias=False)
        self.V_att2 = nn.Conv2d(dim, dim, (3, att_kernel), 1, (1, p), groups=dim, bias=False)
        self.norm = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.max_m2(self.max_m1(x))
        h, w = t.shape[-2:]
        att = self.H_att1(t) + self.V_att1(t)
        att = att + unshear_rows(self.H_att2(shear_rows(t)), w)
        att = att + _unshear_cols(self.V_att2(_shear_cols(t)), h)
        gate = F.interpolate(torch.sigmoid(self.norm(att)), size=x.shape[-2:], mode="nearest")
        return x * gate


class _MaxPoolWrap(nn.Module):
    """Run ``inner`` on the 2x2-max-pooled map and max-unpool its output back."""

    def _pool(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.max_pool2d(x, 2, 2, return_indices=True)

    @staticmethod
    def _unpool(y: torch.Tensor, idx: torch.Tensor, size: torch.Size) -> torch.Tensor:
        return F.max_unpool2d(y, idx, 2, 2, output_size=size)


class GlobalAttentionConv(_MaxPoolWrap):
    """Stages 1-2 global branch: large-kernel selective attention on the max-pooled map."""

    def __init__(self, dim: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.proj_1 = nn.Conv2d(dim, dim, 1)
        self.activation = act()
        self.conv0 = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.conv_spatial = nn.Conv2d(dim, dim, 7, padding=9, groups=dim, dilation=3)
        self.conv1 = nn.Conv2d(dim, dim // 2, 1)
        self.conv2 = nn.Conv2d(dim, dim // 2, 1)
        self.conv_squeeze = nn.Conv2d(2, 2, 7, padding=3)
        self.conv = nn.Conv2d(dim // 2, dim, 1)
        self.proj_2 = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, idx = self._pool(x)
        y = self.activation(self.proj_1(y))
        a1 = self.conv0(y)
        a2 = self.conv_spatial(a1)
        a1, a2 = self.conv1(a1), self.conv2(a2)
        cat = torch.cat([a1, a2], 1)
        agg = torch.cat([cat.mean(1, keepdim=True), cat.amax(1, keepdim=True)], 1)
        sig = torch.sigmoid(self.conv_squeeze(agg))
        attn = self.conv(a1 * sig[:, :1] + a2 * sig[:, 1:])
        return self._unpool(self.proj_2(y * attn), idx, x.shape[-2:])


class GlobalSelfAttention(nn.Module):
    """Multi-head self-attention over all pixels (head width 4, no biases), NCHW in and out."""

    def __init__(self, dim: int, head_dim: int = 4) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.num_heads = max(dim // head_dim, 1)
        inner = self.num_heads * head_dim
        self.qkv = nn.Linear(dim, inner * 3, bias=False)
        self.proj = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        qkv = self.qkv(x.flatten(2).transpose(1, 2))
        q, k, v = qkv.reshape(b, h * w, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # scale head_dim ** -0.5
        out = self.proj(out.transpose(1, 2).reshape(b, h * w, -1))
        return out.transpose(1, 2).reshape(b, -1, h, w)


class PooledSelfAttention(_MaxPoolWrap):
    """Stage 3 global branch: self-attention and BN on the max-pooled map, max-unpooled."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(dim)
        self.attn = GlobalSelfAttention(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, idx = self._pool(x)
        return self._unpool(self.norm(self.attn(y)), idx, x.shape[-2:])


class LWGABlock(nn.Module):
    """The LWGA block: four channel groups through PA, LA, MRA and a stage-dependent global
    attention, concatenated, then MLP and BN added to the input."""

    def __init__(
        self,
        dim: int,
        stage: int,
        att_kernel: int,
        mlp_ratio: float,
        act: type[nn.Module],
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % 4:
            raise ValueError(f"LWGA block width must be divisible by 4 (four groups), got {dim}")
        self.stage, self.dim_split = stage, dim // 4
        c = self.dim_split
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Conv2d(dim, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            act(),
            nn.Conv2d(hidden, dim, 1, bias=False),
        )
        self.PA = PointAttention(c, act)
        self.LA = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), act())
        self.MRA = MediumRangeAttention(c, att_kernel)
        if stage == 2:
            self.GA = PooledSelfAttention(c)
            self.norm = nn.Identity()
        else:
            self.GA = GlobalAttentionConv(c, act) if stage < 2 else GlobalSelfAttention(c)
            self.norm = nn.BatchNorm2d(c)
        self.norm1 = nn.BatchNorm2d(dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2, x3, x4 = torch.split(x, self.dim_split, dim=1)
        x_att = torch.cat(
            [x1 + self.PA(x1), self.LA(x2), self.MRA(x3), self.norm(x4 + self.GA(x4))], 1
        )
        # the release normalizes after stochastic depth: x + BN(drop_path(mlp(.)))
        return x + self.norm1(self.drop_path(self.mlp(x_att)))


class DRFD(nn.Module):
    """Downsampling that keeps both a strided depthwise conv path and a max-pool path (2x width)."""

    def __init__(self, dim: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim * 2, 3, 1, 1, groups=dim)
        self.conv_c = nn.Conv2d(dim * 2, dim * 2, 3, 2, 1, groups=dim * 2)
        self.act_c = act()
        self.norm_c = nn.BatchNorm2d(dim * 2)
        self.max_m = nn.MaxPool2d(3, 2, 1)
        self.norm_m = nn.BatchNorm2d(dim * 2)
        self.fusion = nn.Conv2d(dim * 4, dim * 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        conv = self.norm_c(self.act_c(self.conv_c(x)))
        return self.fusion(torch.cat([conv, self.norm_m(self.max_m(x))], 1))


class LWGANet(ImageClassifier):
    width_args = ("stem_dim", "feature_dim")
    depth_args = ("depths",)

    def __init__(
        self,
        depths: tuple[int, int, int, int] = (1, 2, 4, 2),
        stem_dim: int = 64,
        att_kernel: int | tuple[int, ...] = 11,
        mlp_ratio: float = 2.0,
        act: str = "gelu",
        feature_dim: int = 1280,
        stem_patch: int = 4,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if len(depths) != 4 or min(depths) < 1:
            raise ValueError(f"LWGANet needs four stages of >= 1 block, got depths={depths}")
        if act not in _ACTS:
            raise ValueError(f"act must be one of {sorted(_ACTS)}, got {act!r}")
        if stem_dim % 4 or stem_dim < 8:
            raise ValueError(f"stem_dim must be a multiple of 4 and >= 8, got {stem_dim}")
        kernels = (att_kernel,) * 4 if isinstance(att_kernel, int) else tuple(att_kernel)
        if len(kernels) != 4 or any(k < 1 or k % 2 == 0 for k in kernels):
            raise ValueError(f"att_kernel must be an odd size (or four), got {att_kernel}")
        if stem_patch < 1:
            raise ValueError(f"stem_patch must be >= 1, got {stem_patch}")
        act_layer = _ACTS[act]
        self.num_classes, self.in_chans = num_classes, in_chans
        self.stem_patch, self.feature_dim, self.act = stem_patch, feature_dim, act
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, stem_dim, stem_patch, stride=stem_patch, bias=False),
            nn.BatchNorm2d(stem_dim),
        )
        dprs = drop_path_rates(drop_path_rate, depths)
        self.stages = nn.ModuleList()
        self.feature_info = []
        for i, depth in enumerate(depths):
            dim = stem_dim * 2**i
            layers: list[nn.Module] = [DRFD(dim // 2, act_layer)] if i else []
            layers += [
                LWGABlock(dim, i, kernels[i], mlp_ratio, act_layer, dprs[i][j])
                for j in range(depth)
            ]
            self.stages.append(nn.Sequential(*layers))
            self.feature_info.append(FeatureInfo(dim, stem_patch * 2**i, f"stages.{i}"))
        self.cam_target = "stages.3"
        self.num_features = stem_dim * 8
        self.drop_rate, self.act_layer = drop_rate, act_layer
        self.reset_classifier(num_classes)
        self.apply(self._init_weights)
        if not all(self.input_side_ok(s) for s in to_2tuple(img_size)):
            raise ValueError(f"img_size: {self._input_size_error(*to_2tuple(img_size))}")

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def input_side_ok(self, side: int, axis: int = 0) -> bool:
        # the blur pool reflect-pads the last stage's map by 2: it needs at least 3 pixels
        s = side // self.stem_patch
        for _ in range(3):
            s = (s + 1) // 2
        return s >= 3

    def input_size_rule(self) -> str:
        least = next(s for s in range(1, 4096) if self.input_side_ok(s))
        return f"needs H and W of at least {least} (a last-stage map of 3 pixels)"

    def reset_classifier(self, num_classes: int) -> None:
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        self.num_classes = num_classes
        # the release's head: pooled features -> 1x1 conv to feature_dim (no bias) -> act
        # -> linear; pre-logits are the pooled features, so the projection belongs to the head
        self.head = (
            nn.Sequential(
                nn.Linear(self.num_features, self.feature_dim, bias=False),
                self.act_layer(),
                nn.Dropout(self.drop_rate),
                nn.Linear(self.feature_dim, num_classes),
            )
            if num_classes
            else nn.Identity()
        )
        self.head.apply(self._init_weights)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((2, 3))
        return x if pre_logits else self.head(x)


_PAPER = "LWGANet: A Lightweight Group Attention Backbone for Remote Sensing Visual Tasks"
_SRC = (
    "parameters of the official release's classification models (AeroVILab-AHU/LWGANet, "
    "classification/models/LWGANet.py) at 1000 classes; its README states no counts"
)


def _card(params: float | None, **kw: Any) -> ModelCard:
    return ModelCard(
        "lwganet", _PAPER, 2025, "cnn", params_m=params, source=_SRC if params else "", **kw
    )


@register_model(_card(2.94))
def lwganet_l0(**kwargs: Any) -> LWGANet:
    return build_model(LWGANet, dict(depths=(1, 2, 4, 2), stem_dim=32, act="gelu"), kwargs)


@register_model(_card(7.13))
def lwganet_l1(**kwargs: Any) -> LWGANet:
    return build_model(LWGANet, dict(depths=(1, 2, 4, 2), stem_dim=64, act="gelu"), kwargs)


@register_model(_card(14.26))
def lwganet_l2(**kwargs: Any) -> LWGANet:
    return build_model(LWGANet, dict(depths=(1, 4, 4, 2), stem_dim=96, act="relu"), kwargs)


@register_model(
    _card(
        None,
        scale="cpu",
        img_size=32,
        notes="1x1 patchify stem: a 32x32 input gives 32, 16, 8, 4 grids",
    )
)
def lwganet_pico(**kwargs: Any) -> LWGANet:
    return build_model(
        LWGANet,
        dict(
            depths=(1, 1, 2, 1),
            stem_dim=16,
            att_kernel=5,
            feature_dim=256,
            stem_patch=1,
            img_size=32,
        ),
        kwargs,
    )
