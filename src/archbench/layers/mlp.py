"""Feed-forward blocks."""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from .act import create_act
from .helpers import cpuinfo_field

__all__ = ["ConvMlp", "Mlp", "MlpHead", "PointwiseConv", "matmul_preferred"]


class Mlp(nn.Module):
    """Linear -> act -> dropout -> Linear -> dropout, on the last dimension."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act: str = "gelu",
        bias: bool = True,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = create_act(act)
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class MlpHead(nn.Module):
    """Classifier head on pooled features: Linear(dim, ratio * dim) -> act -> LayerNorm ->
    dropout -> Linear(classes).

    The MLP head of *MetaFormer Baselines for Vision* (SquaredReLU, LayerNorm eps 1e-5),
    also used by InceptionNeXt and MambaOut (GELU, eps 1e-6).
    """

    def __init__(
        self,
        dim: int,
        num_classes: int,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        act: str = "gelu",
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        hidden = int(mlp_ratio * dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = create_act(act)
        self.norm = nn.LayerNorm(hidden, eps=norm_eps)
        self.drop = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(self.norm(self.act(self.fc1(x)))))


def _cpu_vendor() -> str:
    """The CPU's vendor string (``GenuineIntel``, ``AuthenticAMD``, ...), or ``""``."""
    return cpuinfo_field("vendor_id")


@functools.cache
def _cpu_matmul_preferred() -> bool:
    if torch.backends.cpu.get_cpu_capability() != "AVX512":
        return True
    return _cpu_vendor() != "AuthenticAMD"


def matmul_preferred(device: torch.device) -> bool:
    """Whether :class:`PointwiseConv` runs a channels-last 1x1 convolution as a matrix
    multiply on ``device``: everywhere except AMD CPUs with AVX512.

    The matrix multiply is MKL's GEMM, which takes its AVX512 code on Intel CPUs only;
    oneDNN's 1x1 convolution uses AVX512 on both vendors. Measured on three CPUs (forward
    and backward, MetaFormer shapes at 224x224 batch 8 and 32x32 batch 64): on an AVX2
    AMD EPYC the matrix multiply trained MetaFormer blocks about 1.15x faster end to end
    than the convolution; on an AVX512 AMD EPYC oneDNN's 1x1 convolution was 1.9-2.4x
    faster than the matrix multiply at every shape, and the matrix multiply left
    PoolFormerV2-S12 at 0.72x timm's inference speed (timm runs these layers as
    convolutions); on an AVX512 Intel Xeon the convolution left CAFormer-S18's training
    step at 32x32 at 0.72x timm's speed, and the matrix multiply brought it to 1.00x
    (ConvFormer-S18 1.20x, PoolFormerV2-S12 1.48x; docs/performance.md).
    """
    return device.type != "cpu" or _cpu_matmul_preferred()


class PointwiseConv(nn.Conv2d):
    """A 1x1 convolution (an ``nn.Conv2d``: same parameters, state dict and hooks) that
    runs as a matrix multiply over the channels when its input is stored channels-last
    and that is the faster kernel on the device (:func:`matmul_preferred`).

    ``LayerNorm2d`` and channels-last models leave NCHW tensors whose memory is NHWC; a
    1x1 convolution of such a tensor is ``F.linear`` over its last memory dimension.
    Any other layout takes the convolution. The output has the input's memory layout
    either way.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4 and x.permute(0, 2, 3, 1).is_contiguous() and matmul_preferred(x.device):
            y = F.linear(x.permute(0, 2, 3, 1), self.weight.flatten(1), self.bias)
            return y.permute(0, 3, 1, 2)
        return super().forward(x)


class ConvMlp(nn.Module):
    """The same MLP as 1x1 convolutions on an NCHW tensor (see :class:`PointwiseConv`)."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act: str = "gelu",
        bias: bool = True,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = PointwiseConv(in_features, hidden_features, bias=bias)
        self.act = create_act(act)
        self.drop1 = nn.Dropout(drop)
        self.fc2 = PointwiseConv(hidden_features, out_features, bias=bias)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))
