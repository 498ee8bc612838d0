"""Plug-in attention modules for convolutional blocks (NCHW in, same shape out).

Each registers with ``register_attn`` so a ResNet-style block takes it through one
argument: ``create_model("resnet50", attn_layer="cbam")``. Modules that need the block's
input as well ("previous knowledge") set ``uses_block_input = True`` and are called as
``module(x, block_input)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .channel_attn import register_attn
from .helpers import make_divisible
from .mixers import register_mixer
from .norm import LayerNorm2d

__all__ = [
    "CBAM",
    "GlobalContext",
    "LargeKernelConvAttn",
    "PreviousKnowledgeChannelAttn",
    "SelectiveKernel",
    "TripletAttention",
    "UltraLightSubspaceAttn",
]


@register_attn("cbam")
class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al., 2018).

    Channel attention: a shared MLP on the average- and max-pooled descriptors, summed,
    sigmoid. Then spatial attention: a k x k convolution over the channel-wise average
    and max maps, sigmoid. Applied in that order.
    """

    def __init__(self, channels: int, rd_ratio: float = 1 / 16, spatial_kernel: int = 7) -> None:
        super().__init__()
        rd = make_divisible(channels * rd_ratio, 1, min_value=1)
        self.fc1 = nn.Conv2d(channels, rd, 1)
        self.fc2 = nn.Conv2d(rd, channels, 1)
        self.spatial = nn.Conv2d(2, 1, spatial_kernel, padding=spatial_kernel // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True))))
        mx = self.fc2(F.relu(self.fc1(x.amax((2, 3), keepdim=True))))
        x = x * torch.sigmoid(avg + mx)
        maps = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(maps))


@register_attn("gc")
class GlobalContext(nn.Module):
    """Global context block (GCNet; Global Context Networks).

    Context modelling: a 1x1 convolution gives one attention logit per position, softmax
    over all positions, weighted sum of features (one query-independent context vector).
    Transform: 1x1 conv bottleneck (ratio ``rd_ratio``) with LayerNorm and ReLU. Fusion: add.
    """

    def __init__(self, channels: int, rd_ratio: float = 1 / 16) -> None:
        super().__init__()
        rd = make_divisible(channels * rd_ratio, 1, min_value=1)
        self.attn_logits = nn.Conv2d(channels, 1, 1)
        self.transform = nn.Sequential(
            nn.Conv2d(channels, rd, 1),
            LayerNorm2d(rd, eps=1e-5),
            nn.ReLU(inplace=True),
            nn.Conv2d(rd, channels, 1),
        )
        nn.init.zeros_(self.transform[-1].weight)  # start as identity, as the paper does
        nn.init.zeros_(self.transform[-1].bias)

    def context(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        weights = self.attn_logits(x).view(b, 1, h * w).softmax(dim=-1)  # B x 1 x N
        return torch.bmm(x.view(b, c, h * w), weights.transpose(1, 2)).view(b, c, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.transform(self.context(x))


class _ZPoolGate(nn.Module):
    """Z-pool (max and mean over the first feature axis) -> k x k conv + BN -> sigmoid gate."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.bn(self.conv(pooled)))


@register_attn("triplet")
class TripletAttention(nn.Module):
    """Triplet attention (Rotate to Attend, Misra et al., 2021).

    Three branches capture (C, W), (C, H) and (H, W) interactions by rotating the tensor
    so that a different axis is pooled; each branch is a Z-pool gate; outputs averaged.
    About 300 parameters per module, independent of the width.
    """

    def __init__(self, channels: int, kernel_size: int = 7) -> None:
        super().__init__()
        self.cw = _ZPoolGate(kernel_size)  # pools over H
        self.hc = _ZPoolGate(kernel_size)  # pools over W
        self.hw = _ZPoolGate(kernel_size)  # pools over C

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.cw(x.permute(0, 2, 1, 3)).permute(0, 2, 1, 3)
        b = self.hc(x.permute(0, 3, 2, 1)).permute(0, 3, 2, 1)
        c = self.hw(x)
        return (a + b + c) / 3.0


@register_attn("ulsam")
class UltraLightSubspaceAttn(nn.Module):
    """ULSAM (Saini et al., 2020): one attention map per channel subspace.

    Channels split into ``groups`` subspaces; each gets a depthwise 1x1 conv, a 3x3 max-pool
    (stride 1), a pointwise conv to one map, softmax over positions; the subspace is
    re-weighted by its map and added to itself (x * A + x).
    """

    def __init__(self, channels: int, groups: int = 4) -> None:
        super().__init__()
        if channels % groups:
            raise ValueError(f"ULSAM: channels {channels} must be divisible by groups {groups}")
        self.groups = groups
        sub = channels // groups
        self.dw = nn.Conv2d(channels, channels, 1, groups=channels)
        self.pool = nn.MaxPool2d(3, stride=1, padding=1)
        # one pointwise conv (sub -> 1) per subspace, as a grouped convolution
        self.pw = nn.Conv2d(channels, groups, 1, groups=groups)
        self.sub = sub

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        logits = self.pw(self.pool(F.relu(self.dw(x))))  # B x G x H x W
        attn = logits.view(b, self.groups, h * w).softmax(-1).view(b, self.groups, 1, h, w)
        xs = x.view(b, self.groups, self.sub, h, w)
        return (xs * attn + xs).view(b, c, h, w)


@register_attn("sk")
class SelectiveKernel(nn.Module):
    """Selective kernel unit (SKNet, Li et al., 2019), width-preserving.

    Split: M grouped 3x3 branches with dilation 1..M (receptive fields 3, 5, ...). Fuse:
    sum, global pool, FC to d = max(C / r, L). Select: one FC per branch, softmax across
    branches per channel, weighted sum of the branch outputs.
    """

    def __init__(
        self,
        channels: int,
        branches: int = 2,
        groups: int = 32,
        rd_ratio: float = 1 / 16,
        min_dim: int = 32,
    ) -> None:
        super().__init__()
        groups = math.gcd(groups, channels)
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(channels, channels, 3, padding=d, dilation=d, groups=groups, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            )
            for d in range(1, branches + 1)
        )
        d = max(int(channels * rd_ratio), min_dim)
        self.fuse = nn.Sequential(
            nn.Conv2d(channels, d, 1, bias=False), nn.BatchNorm2d(d), nn.ReLU(inplace=True)
        )
        self.select = nn.Conv2d(d, channels * branches, 1)
        self.num_branches = branches

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = torch.stack([br(x) for br in self.branches], dim=1)  # B x M x C x H x W
        z = self.fuse(feats.sum(1).mean((2, 3), keepdim=True))
        b, m, c = feats.shape[:3]
        weights = self.select(z).view(b, m, c, 1, 1).softmax(dim=1)
        return (feats * weights).sum(1)


@register_attn("pkcam")
class PreviousKnowledgeChannelAttn(nn.Module):
    """PKCAM (Bakr et al., 2022): channel attention informed by the previous layer.

    The channel descriptors of the current features and of the block input (the previous
    layer's output; linearly resampled along the channel axis when widths differ) are
    stacked as two signals over channels and mixed by one 1-D convolution, ECA-style,
    giving a sigmoid gate per channel. A few dozen parameters.
    """

    uses_block_input = True

    def __init__(
        self, channels: int, kernel_size: int | None = None, gamma: int = 2, beta: int = 1
    ) -> None:
        super().__init__()
        if kernel_size is None:
            t = int(abs((math.log2(channels) + beta) / gamma))
            kernel_size = t if t % 2 else t + 1
        self.conv = nn.Conv1d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor, previous: torch.Tensor | None = None) -> torch.Tensor:
        cur = x.mean((2, 3)).unsqueeze(1)  # B x 1 x C
        if previous is None:
            prev = cur
        else:
            prev = previous.mean((2, 3)).unsqueeze(1)
            if prev.shape[-1] != cur.shape[-1]:
                prev = F.interpolate(prev, size=cur.shape[-1], mode="linear", align_corners=True)
        gate = torch.sigmoid(self.conv(torch.cat([prev, cur], dim=1)))  # B x 1 x C
        return x * gate.transpose(1, 2).unsqueeze(-1)


@register_mixer("lkca")
@register_attn("lkca")
class LargeKernelConvAttn(nn.Module):
    """Large Kernel Convolutional Attention (LKCA, 2024): spatial attention replaced by one
    large-kernel depthwise convolution, followed by the usual output projection.

    Registered both as a plug-in for convolutional blocks and as a MetaFormer token mixer.
    """

    def __init__(self, channels: int, kernel_size: int = 7, bias: bool = True) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"LKCA kernel_size must be odd, got {kernel_size}")
        self.conv = nn.Conv2d(
            channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=bias
        )
        self.proj = nn.Conv2d(channels, channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.conv(x))
