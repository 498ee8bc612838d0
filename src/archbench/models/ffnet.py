"""FFNet: Fast-Forward Networks built from FFNified attention (*MetaMixer Is All You
Need*, Yun et al., 2024).

FFNification keeps self-attention's query-key-value structure but uses an FFN's
sub-operations: a 1x1 conv (+BN) forms the query, a large-kernel depthwise conv plays
the keys, GELU replaces softmax, and a second depthwise conv plays the values, all on the
spatial dimension where an FFN works on channels (``FFNifiedAttention``). The channel
mixer is a depthwise conv followed by an FFN (1x1 expand, GELU, 1x1). Each mixer is a
residual branch (optionally layer-scaled); there is no normalisation before the mixers.

Following the official release: 7x7 depthwise convs are trained as a 7x7 and a 3x3
branch (each conv + BN) that can be merged into one 7x7 after training (``RepDWConv``;
``FFNet.reparameterize()`` folds all of it, and every conv-BN pair, into plain convs);
the stem
is two 3x3/2 conv-BN layers with GELU between; stages are joined by a stride-2
``RepDWConv`` and a BN -> 1x1 conv residual; the head is BatchNorm, average pool and a
linear layer. Token-mixer kernels are 3, 3, 7, 7 by stage; inputs are 256 px.

CPU variants use a first stem conv at stride 1, so 32x32 inputs give 16, 8, 4, 2 grids.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from ..layers import DropPath, drop_path_rates
from ..layers.helpers import init_trunc_normal
from ._base import FeatureInfo, ImageClassifier
from ._registry import ModelCard, build_model, register_model

__all__ = ["FFNet", "FFNifiedAttention", "RepDWConv"]


def _conv_bn(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)
    )


@torch.no_grad()
def _fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``bn(conv(x))`` as one convolution (eval-mode BN statistics)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    weight = conv.weight * scale.view(-1, 1, 1, 1)
    bias = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return weight, bias


def _new_conv(like: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    conv = nn.Conv2d(
        like.in_channels,
        like.out_channels,
        weight.shape[-1],
        like.stride,
        weight.shape[-1] // 2,
        groups=like.groups,
        bias=True,
    ).to(weight.device, weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
    return conv


class RepDWConv(nn.Module):
    """Depthwise 7x7 conv-BN plus a parallel 3x3 conv-BN branch (mergeable after training).

    ``cout`` a multiple of ``cin`` (every released width) gives depthwise convs with a
    channel multiplier; other widths (rescaled models) use ``gcd(cin, cout)`` groups.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        groups = math.gcd(cin, cout)
        self.conv = _conv_bn(cin, cout, 7, stride, groups=groups)
        self.conv1 = _conv_bn(cin, cout, 3, stride, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.conv1(x)

    def fused(self) -> nn.Conv2d:
        """One 7x7 depthwise conv with bias computing the same function (eval mode)."""
        w7, b7 = _fold_bn(*self.conv)
        w3, b3 = _fold_bn(*self.conv1)
        return _new_conv(self.conv[0], w7 + nn.functional.pad(w3, [2, 2, 2, 2]), b7 + b3)


def _dw(dim: int, k: int, bn: bool) -> nn.Module:
    if k == 7:
        return RepDWConv(dim, dim)
    if bn:
        return _conv_bn(dim, dim, k, groups=dim)
    return nn.Conv2d(dim, dim, k, 1, k // 2, groups=dim)


class FFNifiedAttention(nn.Module):
    """Query 1x1 conv-BN -> key depthwise conv -> GELU -> value depthwise conv."""

    def __init__(self, dim: int, key_kernel: int = 7, value_kernel: int = 7) -> None:
        super().__init__()
        for k in (key_kernel, value_kernel):
            if k % 2 == 0:
                raise ValueError(f"kernel sizes must be odd, got {key_kernel}, {value_kernel}")
        self.fc = _conv_bn(dim, dim)
        self.conv1 = _dw(dim, key_kernel, bn=False)
        self.act = nn.GELU()
        self.conv2 = _dw(dim, value_kernel, bn=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act(self.conv1(self.fc(x))))


class _ChannelMixer(nn.Module):
    def __init__(self, dim: int, kernel: int, expansion: float) -> None:
        super().__init__()
        hidden = int(dim * expansion)
        self.conv = _dw(dim, kernel, bn=True)
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.conv(x))))


class _Residual(nn.Module):
    def __init__(self, main: nn.Module, dim: int, drop_path: float, layer_scale: float | None):
        super().__init__()
        self.main = main
        self.gamma = nn.Parameter(layer_scale * torch.ones(dim, 1, 1)) if layer_scale else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.main(x)
        if self.gamma is not None:
            y = y * self.gamma
        return x + self.drop_path(y)


class FFBlock(nn.Module):
    def __init__(
        self,
        dim: int,
        key_kernel: int,
        value_kernel: int,
        channel_kernel: int,
        expansion: float,
        drop_path: float,
        layer_scale: float | None,
    ) -> None:
        super().__init__()
        self.token_mixer = _Residual(
            FFNifiedAttention(dim, key_kernel, value_kernel), dim, drop_path, layer_scale
        )
        self.channel_mixer = _Residual(
            _ChannelMixer(dim, channel_kernel, expansion), dim, drop_path, layer_scale
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.channel_mixer(self.token_mixer(x))


class _BNConvSkip(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(dim)
        self.conv = nn.Conv2d(dim, dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(self.bn(x))

    @torch.no_grad()
    def fused(self) -> nn.Conv2d:
        """One 1x1 conv with bias: identity + conv(bn(x)) folded together (eval mode)."""
        scale = self.bn.weight / torch.sqrt(self.bn.running_var + self.bn.eps)
        shift = self.bn.bias - self.bn.running_mean * scale
        w = self.conv.weight[:, :, 0, 0]
        weight = w * scale.view(1, -1) + torch.eye(w.shape[0], device=w.device, dtype=w.dtype)
        return _new_conv(self.conv, weight[:, :, None, None], w @ shift)


class FFNet(ImageClassifier):
    width_args = ("dims", "stem_width")
    depth_args = ("depths",)

    def __init__(
        self,
        depths: tuple[int, ...] = (2, 2, 8, 2),
        dims: tuple[int, ...] = (80, 160, 320, 640),
        stem_width: int = 64,
        channel_kernels: tuple[int, ...] = (3, 3, 3, 3),
        key_kernels: tuple[int, ...] = (3, 3, 7, 7),
        value_kernels: tuple[int, ...] = (3, 3, 7, 7),
        expansion: float = 3.0,
        layer_scale: float | None = None,
        stem_stride: int = 4,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 256,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        n = len(depths)
        if not n or any(len(t) != n for t in (dims, channel_kernels, key_kernels, value_kernels)):
            raise ValueError("depths, dims and the kernel tuples must have the same length")
        if stem_stride not in (2, 4):
            raise ValueError(f"stem_stride must be 2 or 4, got {stem_stride}")
        self.num_classes, self.in_chans = num_classes, in_chans
        self.stem = nn.Sequential(
            _conv_bn(in_chans, stem_width, 3, stem_stride // 2),
            nn.GELU(),
            _conv_bn(stem_width, dims[0], 3, 2),
        )
        dprs = drop_path_rates(drop_path_rate, depths)
        self.stages = nn.ModuleList()
        self.feature_info = []
        reduction = stem_stride
        for i in range(n):
            layers: list[nn.Module] = []
            if i > 0:
                layers += [RepDWConv(dims[i - 1], dims[i], stride=2), _BNConvSkip(dims[i])]
                reduction *= 2
            layers += [
                FFBlock(
                    dims[i],
                    key_kernels[i],
                    value_kernels[i],
                    channel_kernels[i],
                    expansion,
                    dprs[i][j],
                    layer_scale,
                )
                for j in range(depths[i])
            ]
            self.stages.append(nn.Sequential(*layers))
            self.feature_info.append(FeatureInfo(dims[i], reduction, f"stages.{i}"))
        self.norm = nn.BatchNorm2d(dims[-1])
        self.num_features = dims[-1]
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.cam_target = f"stages.{n - 1}"
        self.apply(init_trunc_normal)

    @torch.no_grad()
    def reparameterize(self) -> FFNet:
        """Fold every conv-BN pair, parallel branch and BN skip into single convs, in place.

        The result computes the same function as the eval-mode model; this is the form whose
        parameter count the release reports.
        """
        replaced: list[str] = []
        for name, module in list(self.named_modules()):
            if any(name.startswith(r + ".") for r in replaced):
                continue  # inside a module that was already folded as a whole
            if isinstance(module, (RepDWConv, _BNConvSkip)):
                replacement = module.fused()
            elif (
                isinstance(module, nn.Sequential)
                and len(module) == 2
                and isinstance(module[0], nn.Conv2d)
                and isinstance(module[1], nn.BatchNorm2d)
            ):
                replacement = _new_conv(module[0], *_fold_bn(module[0], module[1]))
            else:
                continue
            parent_name, _, child = name.rpartition(".")
            parent = self.get_submodule(parent_name) if parent_name else self
            setattr(parent, child, replacement)
            replaced.append(name)
        return self

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.norm(x)


_PAPER = "MetaMixer Is All You Need"
_SRC = "FFNet official README (ysj9909/FFNet), ImageNet-1k 256px (FFNet-4: 384px)"


# The README counts the re-parameterised (inference) form; these builders make the
# training form, which has the parallel 3x3 branches and BatchNorms on top, so they are
# registered as "other". ``FFNet.reparameterize()`` gives the counted form (tests check
# it against the README within 0.5%).
def _card(params: float, gmacs: float, top1: float, img_size: int = 256) -> ModelCard:
    return ModelCard(
        "ffnet",
        _PAPER,
        2024,
        "cnn",
        scale="other",
        params_m=params,
        gmacs=gmacs,
        top1=top1,
        img_size=img_size,
        source=_SRC,
        notes="params_m is the re-parameterised count; see reparameterize()",
    )


@register_model(_card(13.7, 2.9, 81.3))
def ffnet_1(**kwargs: Any) -> FFNet:
    return build_model(FFNet, dict(depths=(2, 2, 8, 2), dims=(80, 160, 320, 640)), kwargs)


@register_model(_card(26.9, 6.0, 82.9))
def ffnet_2(**kwargs: Any) -> FFNet:
    cfg = dict(depths=(3, 3, 15, 3), dims=(88, 176, 352, 704), channel_kernels=(7, 7, 7, 7))
    return build_model(FFNet, cfg, kwargs)


@register_model(_card(48.3, 10.1, 83.9))
def ffnet_3(**kwargs: Any) -> FFNet:
    cfg = dict(
        depths=(4, 4, 22, 5),
        dims=(96, 192, 384, 768),
        channel_kernels=(7, 7, 7, 7),
        layer_scale=1e-6,
    )
    return build_model(FFNet, cfg, kwargs)


@register_model(_card(79.2, 43.1, 85.3, img_size=384))
def ffnet_4(**kwargs: Any) -> FFNet:
    cfg = dict(
        depths=(4, 4, 27, 3),
        dims=(128, 256, 512, 1024),
        channel_kernels=(7, 7, 7, 7),
        layer_scale=1e-6,
        img_size=384,
    )
    return build_model(FFNet, cfg, kwargs)


@register_model(
    ModelCard(
        "ffnet",
        _PAPER,
        2024,
        "cnn",
        scale="cpu",
        img_size=32,
        notes="first stem conv at stride 1: 16, 8, 4, 2 grids",
    )
)
def ffnet_pico(**kwargs: Any) -> FFNet:
    cfg = dict(
        depths=(1, 1, 2, 1), dims=(24, 48, 96, 192), stem_width=16, stem_stride=2, img_size=32
    )
    return build_model(FFNet, cfg, kwargs)
