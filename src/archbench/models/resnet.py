"""ResNet, ResNeXt, SE-ResNet, ECA-ResNet and SKNet.

*Deep Residual Learning for Image Recognition* (He et al., 2016); *Aggregated Residual
Transformations* (ResNeXt, 2017); *Squeeze-and-Excitation Networks* (2018); *ECA-Net*
(2020); *Selective Kernel Networks* (SKNet, 2019). Channel attention enters a block
through ``attn_layer`` (any name registered with ``archbench.layers.register_attn``: se,
eca, cbam, gc, triplet, ulsam, pkcam, lkca, ...). Other plug-ins each take one argument:
``conv_layer`` for the blocks' k x k convolutions (conv, ws, condconv, arconv; sk, the
selective kernel unit that SKNet puts in place of a bottleneck's 3x3 convolution with its
norm and activation), ``norm_layer`` (batchnorm; bcn, batch-channel
norm; ibn, IBN-a in the first norm of each block of stages 1-3), ``downsample`` (stride,
or spd: space-to-depth then a non-strided convolution) and ``residual`` (plain, or LAuReL:
laurel_rw, laurel_lr, laurel_rw_lr).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from ..layers import DropPath, create_attn, drop_path_rates
from ..layers.conv_variants import LaurelResidual, create_block_norm, create_conv
from ..layers.helpers import add_residual_, init_kaiming_conv
from ..layers.plugin_attn import SelectiveKernel
from ._base import FeatureInfo, ImageClassifier, min_side_for_norms
from ._registry import ModelCard, build_model, register_model

__all__ = ["BasicBlock", "Bottleneck", "ResNet"]


def _conv_bn(
    cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _block_conv(
    cin: int, cout: int, k: int, stride: int, groups: int, conv_layer: str, spd: bool
) -> nn.Module:
    """A block's k x k convolution; with ``spd`` a stride-2 one becomes space-to-depth + conv."""
    if stride == 2 and spd:
        return nn.Sequential(
            nn.PixelUnshuffle(2), create_conv(conv_layer, cin * 4, cout, k, 1, groups)
        )
    return create_conv(conv_layer, cin, cout, k, stride, groups)


def _shortcut(cin: int, cout: int, stride: int, spd: bool) -> nn.Sequential:
    if stride == 2 and spd:
        return nn.Sequential(
            nn.PixelUnshuffle(2), nn.Conv2d(cin * 4, cout, 1, bias=False), nn.BatchNorm2d(cout)
        )
    return _conv_bn(cin, cout, 1, stride=stride, act=False)


@dataclass(frozen=True)
class BlockOptions:
    """Plug-in choices shared by every block of a network."""

    attn_layer: str | None = None
    conv_layer: str = "conv"
    norm_layer: str = "batchnorm"
    first_norm: str = "batchnorm"  # the norm after the block's first convolution (IBN-a)
    spd: bool = False
    residual: str = "plain"


def _finish(block: nn.Module, out: int, opts: BlockOptions, drop_path: float) -> None:
    block.attn = create_attn(opts.attn_layer, out)
    block.attn_uses_input = getattr(block.attn, "uses_block_input", False)
    block.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
    block.merge = (
        LaurelResidual(out, opts.residual.removeprefix("laurel_"))
        if opts.residual != "plain"
        else None
    )


def _residual(
    block: nn.Module, x_in: torch.Tensor, y: torch.Tensor, shortcut: torch.Tensor
) -> torch.Tensor:
    y = block.attn(y, x_in) if block.attn_uses_input else block.attn(y)
    y = block.drop_path(y)
    return block.merge(y, shortcut) if block.merge is not None else add_residual_(y, shortcut)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self,
        cin: int,
        width: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        cardinality: int = 1,
        base_width: int = 64,
        opts: BlockOptions = BlockOptions(),
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if cardinality != 1 or base_width != 64:
            raise ValueError("BasicBlock supports only cardinality=1 and base_width=64")
        if opts.conv_layer == "sk":
            raise ValueError(
                "conv_layer='sk' replaces a bottleneck's 3x3 convolution (SKNet); "
                "use block='bottleneck'"
            )
        self.conv1 = _block_conv(cin, width, 3, stride, 1, opts.conv_layer, opts.spd)
        self.bn1 = create_block_norm(opts.first_norm, width)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = _block_conv(width, width, 3, 1, 1, opts.conv_layer, opts.spd)
        self.bn2 = create_block_norm(opts.norm_layer, width)
        self.downsample = downsample
        _finish(self, width, opts, drop_path)
        self.act2 = nn.ReLU(inplace=True)

    def zero_init_last(self) -> None:
        _zero_norm(self.bn2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        shortcut = x if self.downsample is None else self.downsample(x)  # after the branch
        return self.act2(_residual(self, x, y, shortcut))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(
        self,
        cin: int,
        width: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        cardinality: int = 1,
        base_width: int = 64,
        opts: BlockOptions = BlockOptions(),
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        mid = int(width * (base_width / 64.0)) * cardinality
        out = width * self.expansion
        ws = opts.conv_layer == "ws"
        self.conv1 = create_conv("ws" if ws else "conv", cin, mid, 1)
        self.bn1 = create_block_norm(opts.first_norm, mid)
        self.act1 = nn.ReLU(inplace=True)
        if opts.conv_layer == "sk":
            # SKNet: the SK unit (its branches carry their own BatchNorm and ReLU) in place
            # of the 3x3 convolution, with the bottleneck's cardinality as its groups
            self.conv2 = SelectiveKernel(mid, groups=cardinality, stride=stride)
            self.bn2, self.act2 = nn.Identity(), nn.Identity()
        else:
            self.conv2 = _block_conv(mid, mid, 3, stride, cardinality, opts.conv_layer, opts.spd)
            self.bn2 = create_block_norm(opts.norm_layer, mid)
            self.act2 = nn.ReLU(inplace=True)
        self.conv3 = create_conv("ws" if ws else "conv", mid, out, 1)
        self.bn3 = create_block_norm(opts.norm_layer, out)
        self.downsample = downsample
        _finish(self, out, opts, drop_path)
        self.act3 = nn.ReLU(inplace=True)

    def zero_init_last(self) -> None:
        _zero_norm(self.bn3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.conv1(x)))
        y = self.act2(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        shortcut = x if self.downsample is None else self.downsample(x)  # after the branch
        return self.act3(_residual(self, x, y, shortcut))


def _zero_norm(norm: nn.Module) -> None:
    """Zero the last affine scale of a block's final norm so the block starts as identity
    (for batch-channel norm: its per-group scale, the last one applied)."""
    if getattr(norm, "weight", None) is not None:
        nn.init.zeros_(norm.weight)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}
RESIDUALS = ("plain", "laurel_rw", "laurel_lr", "laurel_rw_lr")


class ResNet(ImageClassifier):
    """A ResNet: stem, four stages of residual blocks, global average pool, linear head.

    ``stem="imagenet"`` is the 7x7/2 convolution plus 3x3/2 max-pool (stride 4);
    ``stem="cifar"`` is one 3x3/1 convolution for 32x32 inputs (stride 1).
    """

    # base_width is the bottleneck width per 64 channels of widths, a ratio that follows widths
    width_args = ("widths", "stem_width")
    depth_args = ("layers",)

    def __init__(
        self,
        layers: tuple[int, ...] = (2, 2, 2, 2),
        block: str = "basic",
        widths: tuple[int, ...] = (64, 128, 256, 512),
        stem: str = "imagenet",
        stem_width: int = 64,
        cardinality: int = 1,
        base_width: int = 64,
        attn_layer: str | None = None,
        conv_layer: str = "conv",
        norm_layer: str = "batchnorm",
        downsample: str = "stride",
        residual: str = "plain",
        zero_init_last: bool = True,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if block not in BLOCKS:
            raise ValueError(f"unknown block {block!r}; choose one of {sorted(BLOCKS)}")
        if len(layers) != len(widths):
            raise ValueError(f"layers {layers} and widths {widths} must have the same length")
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"unknown stem {stem!r}; choose 'imagenet' or 'cifar'")
        if downsample not in ("stride", "spd"):
            raise ValueError(f"unknown downsample {downsample!r}; choose 'stride' or 'spd'")
        if residual not in RESIDUALS:
            raise ValueError(f"unknown residual {residual!r}; choose one of {RESIDUALS}")
        if norm_layer not in ("batchnorm", "bcn", "ibn"):
            raise ValueError(f"unknown norm_layer {norm_layer!r}; choose batchnorm, bcn or ibn")
        if attn_layer == "sk":
            raise ValueError(
                "SK is not a channel-attention plug-in of ResNet: SKNet puts it in place of the "
                "bottleneck's 3x3 convolution; pass conv_layer='sk' instead of attn_layer='sk'"
            )
        if conv_layer == "sk" and downsample == "spd":
            raise ValueError("conv_layer='sk' does not combine with downsample='spd'")
        spd = downsample == "spd"
        block_cls = BLOCKS[block]
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate

        if stem == "imagenet":
            self.stem = nn.Sequential(
                _conv_bn(in_chans, stem_width, 7, stride=2), nn.MaxPool2d(3, stride=2, padding=1)
            )
            reduction = 4
        else:
            self.stem = _conv_bn(in_chans, stem_width, 3, stride=1)
            reduction = 1
        if spd:  # space-to-depth needs even maps at every stride-2 stage
            self.input_multiple = reduction * 2 ** (len(layers) - 1)

        dprs = drop_path_rates(drop_path_rate, layers)
        cin = stem_width
        self.feature_info = []
        stages = []
        for i, (depth, width) in enumerate(zip(layers, widths)):
            stride = 1 if i == 0 else 2
            reduction *= stride
            cout = width * block_cls.expansion
            blocks = []
            for j in range(depth):
                s = stride if j == 0 else 1
                down = None
                if s != 1 or cin != cout:
                    down = _shortcut(cin, cout, s, spd)
                # IBN-a: instance norm in the first norm of blocks in all but the last stage
                ibn = norm_layer == "ibn" and i < len(layers) - 1
                opts = BlockOptions(
                    attn_layer=attn_layer,
                    conv_layer=conv_layer,
                    norm_layer="batchnorm" if norm_layer == "ibn" else norm_layer,
                    first_norm="ibn"
                    if ibn
                    else ("batchnorm" if norm_layer == "ibn" else norm_layer),
                    spd=spd,
                    residual=residual,
                )
                blocks.append(
                    block_cls(cin, width, s, down, cardinality, base_width, opts, dprs[i][j])
                )
                cin = cout
            stages.append(nn.Sequential(*blocks))
            self.feature_info.append(FeatureInfo(cout, reduction, f"layer{i + 1}"))
        # named layer1..layer4 like the original release, so module paths read naturally
        for i, stage in enumerate(stages):
            self.add_module(f"layer{i + 1}", stage)
        self.num_stages = len(stages)
        self.num_features = cin
        self.cam_target = f"layer{len(stages)}"
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(cin, num_classes) if num_classes > 0 else nn.Identity()
        self.min_input_size = min_side_for_norms(
            [(getattr(self, f.module), f.reduction) for f in self.feature_info]
        )
        self._init_weights(zero_init_last)

    def _init_weights(self, zero_init_last: bool) -> None:
        self.apply(init_kaiming_conv)
        if zero_init_last:
            for m in self.modules():
                if hasattr(m, "zero_init_last"):
                    m.zero_init_last()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.stem(x)
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return x


def _resnet(defaults: dict[str, Any], kwargs: dict[str, Any]) -> ResNet:
    return build_model(ResNet, defaults, kwargs)


_RESNET = "Deep Residual Learning for Image Recognition"
_TV = "torchvision release (ImageNet-1k, 224px, single crop)"


@register_model(
    ModelCard("resnet", _RESNET, 2016, "cnn", params_m=11.69, gmacs=1.8, top1=69.76, source=_TV)
)
def resnet18(**kwargs: Any) -> ResNet:
    return _resnet(dict(layers=(2, 2, 2, 2), block="basic"), kwargs)


@register_model(
    ModelCard("resnet", _RESNET, 2016, "cnn", params_m=21.80, gmacs=3.6, top1=73.31, source=_TV)
)
def resnet34(**kwargs: Any) -> ResNet:
    return _resnet(dict(layers=(3, 4, 6, 3), block="basic"), kwargs)


@register_model(
    ModelCard("resnet", _RESNET, 2016, "cnn", params_m=25.56, gmacs=3.8, top1=76.13, source=_TV)
)
def resnet50(**kwargs: Any) -> ResNet:
    return _resnet(dict(layers=(3, 4, 6, 3), block="bottleneck"), kwargs)


@register_model(
    ModelCard("resnet", _RESNET, 2016, "cnn", params_m=44.55, gmacs=7.6, top1=77.37, source=_TV)
)
def resnet101(**kwargs: Any) -> ResNet:
    return _resnet(dict(layers=(3, 4, 23, 3), block="bottleneck"), kwargs)


@register_model(
    ModelCard(
        "resnext",
        "Aggregated Residual Transformations for Deep Neural Networks",
        2017,
        "cnn",
        params_m=25.03,
        gmacs=4.2,
        top1=77.8,
        source="paper Table 3 (top-1 error 22.2) and official release params",
    )
)
def resnext50_32x4d(**kwargs: Any) -> ResNet:
    return _resnet(
        dict(layers=(3, 4, 6, 3), block="bottleneck", cardinality=32, base_width=4), kwargs
    )


@register_model(
    ModelCard(
        "seresnet",
        "Squeeze-and-Excitation Networks",
        2018,
        "cnn",
        params_m=28.09,
        gmacs=3.87,
        top1=76.71,
        source="paper Table 2 (top-1 error 23.29, 3.87 GFLOPs); params of the r=16 release",
    )
)
def seresnet50(**kwargs: Any) -> ResNet:
    return _resnet(dict(layers=(3, 4, 6, 3), block="bottleneck", attn_layer="se"), kwargs)


@register_model(
    ModelCard(
        "ecaresnet",
        "ECA-Net: Efficient Channel Attention for Deep Convolutional Neural Networks",
        2020,
        "cnn",
        params_m=25.56,
        gmacs=3.86,
        top1=77.48,
        source="paper Table 2 (77.48 top-1, 3.86 GFLOPs); params are ResNet-50's 25.557M plus ECA's 80",
        notes="The paper's table lists 24.37M for both ResNet-50 and ECA-Net50, which matches "
        "neither the ResNet-50 architecture (25.557M) nor its own release; ECA adds 80 weights.",
    )
)
def ecaresnet50(**kwargs: Any) -> ResNet:
    return _resnet(dict(layers=(3, 4, 6, 3), block="bottleneck", attn_layer="eca"), kwargs)


_CPU = dict(stem="cifar", img_size=32)


@register_model(ModelCard("resnet", _RESNET, 2016, "cnn", scale="cpu", img_size=32))
def resnet_pico(**kwargs: Any) -> ResNet:
    """Four stages of one basic block, widths 16-128, CIFAR stem (0.31M parameters at 10 classes)."""
    return _resnet(
        dict(layers=(1, 1, 1, 1), widths=(16, 32, 64, 128), stem_width=16, **_CPU), kwargs
    )


@register_model(ModelCard("resnet", _RESNET, 2016, "cnn", scale="cpu", img_size=32))
def resnet_nano(**kwargs: Any) -> ResNet:
    """ResNet-10-style: one basic block per stage, widths 32-256, CIFAR stem."""
    return _resnet(
        dict(layers=(1, 1, 1, 1), widths=(32, 64, 128, 256), stem_width=32, **_CPU), kwargs
    )


@register_model(ModelCard("resnet", _RESNET, 2016, "cnn", scale="cpu", img_size=32))
def resnet18_cifar(**kwargs: Any) -> ResNet:
    """ResNet-18 with the CIFAR stem (3x3/1, no max-pool), the usual 32x32 baseline."""
    return _resnet(dict(layers=(2, 2, 2, 2), **_CPU), kwargs)


@register_model(
    ModelCard("seresnet", "Squeeze-and-Excitation Networks", 2018, "cnn", scale="cpu", img_size=32)
)
def seresnet_pico(**kwargs: Any) -> ResNet:
    return _resnet(
        dict(layers=(1, 1, 1, 1), widths=(16, 32, 64, 128), stem_width=16, attn_layer="se", **_CPU),
        kwargs,
    )


@register_model(
    ModelCard(
        "ecaresnet",
        "ECA-Net: Efficient Channel Attention for Deep Convolutional Neural Networks",
        2020,
        "cnn",
        scale="cpu",
        img_size=32,
    )
)
def ecaresnet_pico(**kwargs: Any) -> ResNet:
    return _resnet(
        dict(
            layers=(1, 1, 1, 1), widths=(16, 32, 64, 128), stem_width=16, attn_layer="eca", **_CPU
        ),
        kwargs,
    )


@register_model(
    ModelCard(
        "resnext",
        "Aggregated Residual Transformations for Deep Neural Networks",
        2017,
        "cnn",
        scale="cpu",
        img_size=32,
    )
)
def resnext_pico(**kwargs: Any) -> ResNet:
    return _resnet(
        dict(
            layers=(1, 1, 1, 1),
            block="bottleneck",
            widths=(16, 32, 64, 128),
            stem_width=16,
            cardinality=8,
            base_width=4,
            **_CPU,
        ),
        kwargs,
    )


_SKNET = "Selective Kernel Networks"
_SKNET_SRC = "paper Table 2 (SKNet-50: 27.5M params, 4.47 GFLOPs, top-1 error 20.79)"


@register_model(
    ModelCard(
        "sknet", _SKNET, 2019, "cnn", params_m=27.5, gmacs=4.47, top1=79.21, source=_SKNET_SRC
    )
)
def sknet50(**kwargs: Any) -> ResNet:
    """SKNet-50: ResNeXt-50 (32x4d) with SK[M=2, G=32, r=16] in place of every 3x3 conv."""
    return _resnet(
        dict(
            layers=(3, 4, 6, 3),
            block="bottleneck",
            cardinality=32,
            base_width=4,
            conv_layer="sk",
        ),
        kwargs,
    )


@register_model(
    ModelCard(
        "sknet",
        _SKNET,
        2019,
        "cnn",
        params_m=27.5,
        gmacs=4.47,
        top1=79.21,
        source=_SKNET_SRC,
        notes="The paper's SKNet-50 is built on ResNeXt-50 (32x4d); this is the same "
        "network under the name other libraries give it.",
    )
)
def skresnext50_32x4d(**kwargs: Any) -> ResNet:
    """SK-ResNeXt-50 (32x4d): the paper's SKNet-50."""
    return sknet50(**kwargs)


@register_model(ModelCard("sknet", _SKNET, 2019, "cnn", scale="cpu", img_size=32))
def sknet_pico(**kwargs: Any) -> ResNet:
    """One SK bottleneck per stage, widths 16-128 (x4 out), cardinality 8, CIFAR stem."""
    return _resnet(
        dict(
            layers=(1, 1, 1, 1),
            block="bottleneck",
            widths=(16, 32, 64, 128),
            stem_width=16,
            cardinality=8,
            base_width=4,
            conv_layer="sk",
            **_CPU,
        ),
        kwargs,
    )
