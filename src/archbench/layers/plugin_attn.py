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
    and max maps, followed by a one-channel BatchNorm (as the official release's
    ``SpatialGate``), sigmoid. Applied in that order.
    """

    def __init__(self, channels: int, rd_ratio: float = 1 / 16, spatial_kernel: int = 7) -> None:
        super().__init__()
        rd = make_divisible(channels * rd_ratio, 1, min_value=1)
        self.fc1 = nn.Conv2d(channels, rd, 1)
        self.fc2 = nn.Conv2d(rd, channels, 1)
        self.spatial = nn.Conv2d(2, 1, spatial_kernel, padding=spatial_kernel // 2, bias=False)
        self.spatial_bn = nn.BatchNorm2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True))))
        mx = self.fc2(F.relu(self.fc1(x.amax((2, 3), keepdim=True))))
        x = x * torch.sigmoid(avg + mx)
        maps = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial_bn(self.spatial(maps)))


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

    Channels split into ``groups`` subspaces; each gets a depthwise 1x1 conv with
    BatchNorm and ReLU, a 3x3 max-pool (stride 1), a pointwise conv to one map with
    BatchNorm and ReLU, softmax over positions; the subspace is re-weighted by its map and
    added to itself (x * A + x), as in the official release. Deviation: the release's
    BatchNorm layers pass ``momentum=0.9`` (in PyTorch's convention the running statistics
    would then follow the last batch almost entirely); the PyTorch default 0.1 is used.
    """

    def __init__(self, channels: int, groups: int = 4) -> None:
        super().__init__()
        if channels % groups:
            raise ValueError(f"ULSAM: channels {channels} must be divisible by groups {groups}")
        self.groups = groups
        sub = channels // groups
        self.dw = nn.Conv2d(channels, channels, 1, groups=channels)
        self.dw_bn = nn.BatchNorm2d(channels)
        self.pool = nn.MaxPool2d(3, stride=1, padding=1)
        # one pointwise conv (sub -> 1) per subspace, as a grouped convolution; BatchNorm of
        # the G one-channel maps is the per-subspace BatchNorm(1) of the release
        self.pw = nn.Conv2d(channels, groups, 1, groups=groups)
        self.pw_bn = nn.BatchNorm2d(groups)
        self.sub = sub

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        z = self.pool(F.relu(self.dw_bn(self.dw(x))))
        logits = F.relu(self.pw_bn(self.pw(z)))  # B x G x H x W
        attn = logits.view(b, self.groups, h * w).softmax(-1).view(b, self.groups, 1, h, w)
        xs = x.view(b, self.groups, self.sub, h, w)
        return (xs * attn + xs).view(b, c, h, w)


@register_attn("sk")
class SelectiveKernel(nn.Module):
    """Selective kernel unit (*Selective Kernel Networks*, Li et al., 2019).

    Split: M grouped 3x3 branches with dilation 1..M (receptive fields 3, 5, ...; the
    paper replaces the 5x5 kernel by a dilated 3x3), each with BatchNorm and ReLU, all with
    the unit's ``stride``. Fuse: sum, global pool, FC to d = max(C / r, L) with BatchNorm
    and ReLU. Select: one FC per branch (no bias, as the paper's A and B), softmax across
    branches per channel, weighted sum of the branch outputs. In SKNet the unit replaces a
    bottleneck's 3x3 convolution (with its norm and activation); ResNet builds that with
    ``conv_layer="sk"``. Registered as a width-preserving plug-in as well.
    """

    def __init__(
        self,
        channels: int,
        branches: int = 2,
        groups: int = 32,
        rd_ratio: float = 1 / 16,
        min_dim: int = 32,
        stride: int = 1,
    ) -> None:
        super().__init__()
        if branches < 1 or stride < 1:
            raise ValueError(f"SK needs branches >= 1 and stride >= 1, got {branches}, {stride}")
        groups = math.gcd(groups, channels)
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(
                    channels,
                    channels,
                    3,
                    stride=stride,
                    padding=d,
                    dilation=d,
                    groups=groups,
                    bias=False,
                ),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            )
            for d in range(1, branches + 1)
        )
        d = max(int(channels * rd_ratio), min_dim)
        self.fuse = nn.Sequential(
            nn.Conv2d(channels, d, 1, bias=False), nn.BatchNorm2d(d), nn.ReLU(inplace=True)
        )
        self.select = nn.Conv2d(d, channels * branches, 1, bias=False)
        self.num_branches = branches

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = torch.stack([br(x) for br in self.branches], dim=1)  # B x M x C x H x W
        z = self.fuse(feats.sum(1).mean((2, 3), keepdim=True))
        b, m, c = feats.shape[:3]
        weights = self.select(z).view(b, m, c, 1, 1).softmax(dim=1)
        return (feats * weights).sum(1)


def _eca_kernel(channels: int, gamma: int = 2, beta: int = 1) -> int:
    t = int(abs((math.log2(channels) + beta) / gamma))
    return t if t % 2 else t + 1


def _pairwise_fusion(a: torch.Tensor, b: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """Interleave two (B, C) descriptors channel by channel (a_1, b_1, a_2, b_2, ...) and
    apply a kernel-2, stride-2 1-D convolution: w_0 a_c + w_1 b_c for every channel."""
    return conv(torch.stack([a, b], dim=-1).flatten(1).unsqueeze(1)).squeeze(1)


@register_attn("pkcam")
class PreviousKnowledgeChannelAttn(nn.Module):
    """PKCAM (*Previous Knowledge Channel Attention Module*, Bakr et al., 2022), following
    its official release (the EMCA repository, cross-layer "stage" attention).

    With ``u`` the pooled descriptor of the block's output and ``p`` that of the previous
    layer's output (the block input; tiled along channels when it is narrower, as the
    release repeats it):

    - local attention: ``l = sigmoid(ECA(u))``, a 1-D convolution over channels;
    - input fusion: ``f_c = relu(w_0 p_c + w_1 u_c)``, a learned kernel-2, stride-2 1-D
      convolution over the interleaved descriptors;
    - global attention: ``g = sigmoid(ECA'(f))`` with its own 1-D convolution;
    - output fusion: ``s_c = sigmoid(v_0 l_c + v_1 g_c)``, learned the same way;
    - residual form: the block's output is scaled by ``1 + s`` (the block then adds its
      shortcut), so the module starts near a uniform gain and never blocks a channel.

    Without a previous layer the module is local ECA in the same residual form (the
    release's first block of a stage). ECA kernels follow the width (k = |log2 C + 1| / 2,
    odd). Deviation: when the previous width does not divide the current one, the previous
    descriptor is resampled linearly along channels instead of tiled.
    """

    uses_block_input = True

    def __init__(self, channels: int, kernel_size: int | None = None) -> None:
        super().__init__()
        k = _eca_kernel(channels) if kernel_size is None else kernel_size
        if k % 2 == 0 or k < 1:
            raise ValueError(f"PKCAM kernel_size must be odd and positive, got {k}")
        self.channels = channels
        self.local_conv = nn.Conv1d(1, 1, k, padding=k // 2, bias=False)
        self.global_conv = nn.Conv1d(1, 1, k, padding=k // 2, bias=False)
        self.in_fusion = nn.Conv1d(1, 1, 2, stride=2, bias=False)
        self.out_fusion = nn.Conv1d(1, 1, 2, stride=2, bias=False)

    def _eca(self, conv: nn.Conv1d, d: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(conv(d.unsqueeze(1)).squeeze(1))

    def previous_descriptor(self, previous: torch.Tensor, channels: int) -> torch.Tensor:
        """The previous layer's pooled descriptor at ``channels`` wide."""
        prev = previous.mean((2, 3))
        c_prev = prev.shape[-1]
        if c_prev == channels:
            return prev
        if channels % c_prev == 0:
            return prev.repeat(1, channels // c_prev)
        return F.interpolate(
            prev.unsqueeze(1), size=channels, mode="linear", align_corners=True
        ).squeeze(1)

    def scales(self, x: torch.Tensor, previous: torch.Tensor | None = None) -> torch.Tensor:
        """Per-channel scales s (B, C) before the residual form 1 + s."""
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(
                f"PKCAM built for {self.channels} channels got a tensor of shape {tuple(x.shape)}"
            )
        cur = x.mean((2, 3))
        local = self._eca(self.local_conv, cur)
        if previous is None:
            return local
        prev = self.previous_descriptor(previous, cur.shape[-1])
        fused = F.relu(_pairwise_fusion(prev, cur, self.in_fusion))
        glob = self._eca(self.global_conv, fused)
        return torch.sigmoid(_pairwise_fusion(local, glob, self.out_fusion))

    def forward(self, x: torch.Tensor, previous: torch.Tensor | None = None) -> torch.Tensor:
        return x * (1 + self.scales(x, previous)[..., None, None])


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
