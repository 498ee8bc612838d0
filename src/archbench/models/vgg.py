"""VGG-16 and VGG-19.

*Very Deep Convolutional Networks for Large-Scale Image Recognition* (Simonyan and
Zisserman, 2015): five stages of 3x3 convolutions (stride 1, padding 1) each closed by a
2x2 max-pool, then three fully connected layers (4096, 4096, classes) with dropout 0.5
after the first two. Configurations D (VGG-16) and E (VGG-19) of the paper's Table 1.

The fully connected layers are held in their convolutional form, as in the paper's dense
evaluation (Sec. 3.2): the first is a 7x7 convolution over the last 7x7 map, the second a
1x1 convolution, and the class scores are averaged over the remaining map. At 224x224
this is exactly the three-FC network (same weights, same outputs); larger inputs give a
score map that is averaged, as the paper does at test time. ``forward_features`` ends
with the second FC layer, so its width (4096) is ``num_features``. VGG has no residual
branches, so a non-zero ``drop_path_rate`` is refused.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..layers.conv import ConvNormAct
from ._base import FeatureInfo, ImageClassifier, reject_drop_path, to_2tuple
from ._registry import ModelCard, build_model, register_model

__all__ = ["VGG"]


class VGG(ImageClassifier):
    """Stages of 3x3 convolutions with max-pooling, then a stack of fully connected layers.

    ``depths``/``widths`` give the convolutions per stage and their channels; ``fc_dim``
    the width of the two hidden fully connected layers; ``fc_kernel`` the side of the map
    the first of them covers (7 in the paper, so inputs must be at least 32 * 7);
    ``batchnorm`` adds BN after every convolution (not in the paper, a later variant).
    """

    width_args = ("widths", "fc_dim")
    depth_args = ("depths",)

    def __init__(
        self,
        depths: tuple[int, ...] = (2, 2, 3, 3, 3),
        widths: tuple[int, ...] = (64, 128, 256, 512, 512),
        fc_dim: int = 4096,
        fc_kernel: int = 7,
        batchnorm: bool = False,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        reject_drop_path(drop_path_rate, "VGG")
        if len(depths) != len(widths) or not depths:
            raise ValueError(f"depths {depths} and widths {widths} must be non-empty and match")
        if min(depths) < 1 or min(widths) < 1 or fc_dim < 1 or fc_kernel < 1:
            raise ValueError("depths, widths, fc_dim and fc_kernel must be positive")
        min_size = fc_kernel * 2 ** len(depths)
        if min(to_2tuple(img_size)) < min_size:
            raise ValueError(
                f"VGG with fc_kernel={fc_kernel} needs img_size >= {min_size}, got {img_size} "
                f"(nearest valid: {min_size})"
            )
        self.num_classes = num_classes
        self.in_chans = in_chans
        # max-pools drop odd remainders; the first FC layer needs a fc_kernel map
        self.min_input_size = min_size
        norm = "batchnorm" if batchnorm else None
        stages = []
        self.feature_info = []
        cin = in_chans
        for i, (d, w) in enumerate(zip(depths, widths)):
            layers: list[nn.Module] = []
            for _ in range(d):
                layers.append(ConvNormAct(cin, w, 3, norm=norm, act="relu", inplace_act=True))
                cin = w
            layers.append(nn.MaxPool2d(2, 2))
            stages.append(nn.Sequential(*layers))
            self.feature_info.append(FeatureInfo(w, 2 ** (i + 1), f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.cam_target = f"stages.{len(stages) - 1}"
        self.fc = nn.Sequential(
            nn.Conv2d(cin, fc_dim, fc_kernel),
            nn.ReLU(inplace=True),
            nn.Dropout(drop_rate),
            nn.Conv2d(fc_dim, fc_dim, 1),
            nn.ReLU(inplace=True),
            nn.Dropout(drop_rate),
        )
        self.num_features = fc_dim
        self.head = nn.Linear(fc_dim, num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m.weight.device.type != "meta":
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.fc(self.stages(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((2, 3))
        return x if pre_logits else self.head(x)


_VGG = "Very Deep Convolutional Networks for Large-Scale Image Recognition"


@register_model(
    ModelCard(
        "vgg",
        _VGG,
        2015,
        "cnn",
        params_m=138.36,
        top1=74.4,
        source="paper Table 2 (138M, config D); top-1 error 25.6 single-scale (Table 3, train "
        "S=[256;512], test Q=384); exact count of the official Caffe release, 138,357,544",
    )
)
def vgg16(**kwargs: Any) -> VGG:
    return build_model(VGG, dict(depths=(2, 2, 3, 3, 3), drop_rate=0.5), kwargs)


@register_model(
    ModelCard(
        "vgg",
        _VGG,
        2015,
        "cnn",
        params_m=143.67,
        top1=74.5,
        source="paper Table 2 (144M, config E); top-1 error 25.5 single-scale (Table 3, train "
        "S=[256;512], test Q=384); exact count of the official Caffe release, 143,667,240",
    )
)
def vgg19(**kwargs: Any) -> VGG:
    return build_model(VGG, dict(depths=(2, 2, 4, 4, 4), drop_rate=0.5), kwargs)


@register_model(ModelCard("vgg", _VGG, 2015, "cnn", scale="cpu", img_size=32))
def vgg_pico(**kwargs: Any) -> VGG:
    """VGG-11-like layout (1,1,2,2,2) at widths 16-128 with BN; the 1x1 map feeds 256-wide FC layers."""
    return build_model(
        VGG,
        dict(
            depths=(1, 1, 2, 2, 2),
            widths=(16, 32, 64, 128, 128),
            fc_dim=256,
            fc_kernel=1,
            batchnorm=True,
            img_size=32,
        ),
        kwargs,
    )
