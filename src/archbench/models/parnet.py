"""ParNet: a 12-layer-deep network of parallel streams.

*Non-deep Networks* (Goyal et al., 2022). Three streams at 1/4, 1/8 and 1/16 resolution
run side by side; each is a short stack of RepVGG-SSE blocks (3x3 conv-BN + 1x1 conv-BN
+ BN skip branch gated by Skip-Squeeze-Excitation, SiLU). Downsampling blocks add an
avg-pool + 1x1 conv-BN branch to the 3x3/2 branch and gate the sum by a global-pool
1x1 conv sigmoid of their input; fusion blocks batch-normalize both inputs, concatenate
them interleaved and apply a 2-group downsampling block. The layout follows the official
release (``simpnet.py``): init blocks feed each stream, the streams are fused from the
finest to the coarsest, and a last downsampling block widens to the head width.

``reparameterize()`` folds the 3x3 and 1x1 conv-BN branches of every block into a single
3x3 convolution (the BN skip branch stays: SSE gates it non-linearly, as in the paper).

The paper counts parameters of the fused model; archbench builds the train-time model,
so canonical cards carry its count and ``extra["params_m_fused"]`` the paper's figure,
which the family tests check after ``reparameterize()``. ParNet-S is not canonical: see
its card's notes.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers.reparam import fuse_conv_bn, pad_kernel, reparameterize_model
from ._base import FeatureInfo, ImageClassifier, reject_drop_path
from ._registry import ModelCard, build_model, register_model

__all__ = ["ParNet", "RepSSEBlock"]


class _ConvBN(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int, stride: int, groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)


def _channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class RepSSEBlock(nn.Module):
    """ParNet's RepVGG-style block (Non-deep Networks).

    Same shape (stride 1, cin == cout): 3x3 conv-BN + 1x1 conv-BN + BN(x) * SSE(BN(x)).
    Otherwise (a downsampling or fusion block): 3x3 conv-BN + [avg-pool 2x2] 1x1 conv-BN,
    multiplied by ``2 * sigmoid(conv1x1(gap(x)))``. SiLU after, channel shuffle when grouped.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"RepSSEBlock stride must be 1 or 2, got {stride}")
        self.cin, self.cout, self.stride, self.groups = cin, cout, stride, groups
        self.skip = nn.BatchNorm2d(cin) if cin == cout and stride == 1 else None
        self.dense = _ConvBN(cin, cout, 3, stride, groups)
        pointwise = _ConvBN(cin, cout, 1, 1, groups)
        self.pointwise = nn.Sequential(nn.AvgPool2d(2, 2), pointwise) if stride == 2 else pointwise
        # SSE on the skip branch (version 1) or an input-conditioned gate (version 2)
        self.se = nn.Conv2d(cin, cout, 1, groups=groups, bias=False)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.dense(x)
        if hasattr(self, "pointwise"):
            out = out + self.pointwise(x)
        if self.skip is not None:
            s = self.skip(x)
            out = out + s * torch.sigmoid(self.se(s.mean((2, 3), keepdim=True)))
        else:
            out = out * (2.0 * torch.sigmoid(self.se(x.mean((2, 3), keepdim=True))))
        out = self.act(out)
        return _channel_shuffle(out, self.groups) if self.groups > 1 else out

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the 1x1 (or avg-pool + 1x1) branch and the BNs into one biased 3x3 conv."""
        if not hasattr(self, "pointwise"):
            return
        w, b = fuse_conv_bn(self.dense.conv.weight, self.dense.bn)
        pw = self.pointwise[1] if self.stride == 2 else self.pointwise
        w1, b1 = fuse_conv_bn(pw.conv.weight, pw.bn)
        if self.stride == 2:
            # avg-pool 2x2/2 then 1x1 == a 2x2/2 kernel of w1 / 4, sitting at the bottom-right
            # of the 3x3/2 window (padding 1) when the input size is even
            w1 = F.pad(w1.expand(-1, -1, 2, 2) / 4.0, (1, 0, 1, 0))
        else:
            w1 = pad_kernel(w1, 3)
        conv = nn.Conv2d(self.cin, self.cout, 3, self.stride, 1, groups=self.groups).to(w)
        conv.weight.copy_(w + w1)
        conv.bias.copy_(b + b1)
        self.dense = conv
        del self.pointwise


class _Fusion(nn.Module):
    """BN on each input, interleaved concatenation, then a 2-group block (Non-deep Networks)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn_a = nn.BatchNorm2d(cin)
        self.bn_b = nn.BatchNorm2d(cin)
        self.block = RepSSEBlock(2 * cin, cout, stride, groups=2)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        x = torch.stack((self.bn_a(a), self.bn_b(b)), dim=2).flatten(1, 2)
        return self.block(x)


class ParNet(ImageClassifier):
    """ParNet: init downsampling blocks, three parallel streams, fusion, head.

    ``widths`` = the three stream widths and the head width; ``depths`` = blocks per
    stream counting its feeding downsampling block (the paper's 5, 6, 6).
    ``stem_stride=2`` makes the first init block stride 1 for 32x32 inputs.
    """

    width_args = ("widths",)
    depth_args = ("depths",)

    def __init__(
        self,
        widths: tuple[int, int, int, int] = (96, 192, 384, 1280),
        depths: tuple[int, int, int] = (5, 6, 6),
        stem_stride: int = 4,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if len(widths) != 4 or len(depths) != 3:
            raise ValueError(f"ParNet needs 4 widths and 3 stream depths, got {widths}, {depths}")
        if min(depths) < 1:
            raise ValueError(f"stream depths must be >= 1, got {depths}")
        if stem_stride not in (2, 4):
            raise ValueError(f"stem_stride must be 2 or 4, got {stem_stride}")
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        reject_drop_path(
            drop_path_rate, "ParNet", " (its blocks sum parallel branches that fold into one conv)"
        )
        p0, p1, p2, p_last = widths
        stem = min(64, p0)
        self.inits = nn.ModuleList(
            [
                nn.Sequential(
                    RepSSEBlock(in_chans, stem, 2 if stem_stride == 4 else 1),
                    RepSSEBlock(stem, p0, 2),
                ),
                RepSSEBlock(p0, p1, 2),
                RepSSEBlock(p1, p2, 2),
            ]
        )
        self.streams = nn.ModuleList(
            nn.Sequential(*(RepSSEBlock(p, p) for _ in range(d - 1)))
            for p, d in zip((p0, p1, p2), depths)
        )
        self.down0 = RepSSEBlock(p0, p1, 2)
        self.fuse1 = _Fusion(p1, p2, 2)
        self.fuse2 = _Fusion(p2, p2, 1)
        self.final = RepSSEBlock(p2, p_last, 2)
        r = stem_stride
        self.feature_info = [
            FeatureInfo(p0, r, "streams.0"),
            FeatureInfo(p1, 2 * r, "streams.1"),
            FeatureInfo(p2, 4 * r, "streams.2"),
            FeatureInfo(p_last, 8 * r, "final"),
        ]
        self.input_multiple = 8 * r
        self.num_features = p_last
        self.cam_target = "final"
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(p_last, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x0 = self.inits[0](x)
        x1 = self.inits[1](x0)
        x2 = self.inits[2](x1)
        y = self.down0(self.streams[0](x0))
        y = self.fuse1(self.streams[1](x1), y)
        y = self.fuse2(self.streams[2](x2), y)
        return self.final(y)

    def reparameterize(self) -> ParNet:
        """Fuse the conv-BN branches of every block in place (eval mode); returns the model."""
        return reparameterize_model(self)


_PAPER = "Non-deep Networks"
_SRC = (
    "paper Table 1 (ImageNet 224px: params of the fused model, top-1) and the official "
    "release configs (imagenet/models/*.yaml, train_models.sh); card params are the "
    "train-time (unfused) model built from those configs"
)


def _card(
    train: float, fused: float, top1: float, scale: str = "canonical", notes: str = ""
) -> ModelCard:
    return ModelCard(
        "parnet",
        _PAPER,
        2022,
        "cnn",
        scale=scale,
        params_m=train,
        top1=top1,
        source=_SRC,
        notes=notes
        or f"card params count the unfused train-time model; the paper reports the fused "
        f"model, {fused}M (extra['params_m_fused'])",
        extra={"params_m_fused": fused},
    )


@register_model(
    _card(
        20.93,
        19.0,
        75.19,
        scale="other",
        notes="the release's ParNet-S config (widths 92-192-384-1280) fuses to 19.13M, 0.7% above "
        "the paper's 19.0M (widths 96 give 19.18M); no width choice we found reproduces 19.0M "
        "within 0.5%, so this variant is not marked canonical",
    )
)
def parnet_s(**kwargs: Any) -> ParNet:
    return build_model(ParNet, dict(widths=(92, 192, 384, 1280)), kwargs)


@register_model(_card(38.95, 35.6, 76.60))
def parnet_m(**kwargs: Any) -> ParNet:
    return build_model(ParNet, dict(widths=(128, 256, 512, 2048)), kwargs)


@register_model(_card(60.18, 54.9, 77.66))
def parnet_l(**kwargs: Any) -> ParNet:
    return build_model(ParNet, dict(widths=(160, 320, 640, 2560)), kwargs)


@register_model(_card(93.18, 85.0, 78.55))
def parnet_xl(**kwargs: Any) -> ParNet:
    return build_model(ParNet, dict(widths=(200, 400, 800, 3200)), kwargs)


@register_model(ModelCard("parnet", _PAPER, 2022, "cnn", scale="cpu", img_size=32))
def parnet_pico(**kwargs: Any) -> ParNet:
    """Streams at 16x16, 8x8 and 4x4 (stride-2 stem), widths 32-256, two blocks per stream."""
    return build_model(
        ParNet,
        dict(widths=(32, 64, 128, 256), depths=(2, 2, 2), stem_stride=2, img_size=32),
        kwargs,
    )
