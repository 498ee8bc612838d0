"""The All-Convolutional Net (All-CNN-C).

*Striving for Simplicity: The All Convolutional Net* (Springenberg et al., 2015), model
C of Table 2, a CIFAR network: every max-pool of the base model is replaced by a 3x3
convolution with stride 2, and the classifier is convolutional too::

    3x3 conv 96, 3x3 conv 96, 3x3 conv 96 stride 2
    3x3 conv 192, 3x3 conv 192, 3x3 conv 192 stride 2
    3x3 conv 192 (no padding: 8x8 -> 6x6), 1x1 conv 192, 1x1 conv <classes>
    global average over the 6x6 map, softmax

All layers are followed by ReLU, the class-score convolution included, as the table
lists it (``score_relu=False`` drops that ReLU). There is no batch norm. The paper's
dropout (20% on the input, 50% after each stride-2 layer) is ``input_drop_rate`` and
``drop_rate``. There are no residual branches, so a non-zero ``drop_path_rate`` is refused.

The classifier block shrinks the 8x8 map to 6x6, a non-integer reduction, so
``feature_info`` lists the two strided stages; ``cam_target`` is the classifier block.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers.conv import ConvNormAct
from ._base import FeatureInfo, ImageClassifier, check_img_size, reject_drop_path
from ._registry import ModelCard, build_model, register_model

__all__ = ["AllConvNet"]


def _conv(cin: int, cout: int, k: int, stride: int = 1, padding: int | None = None) -> nn.Module:
    return ConvNormAct(cin, cout, k, stride, padding=padding, norm=None, act="relu")


class AllConvNet(ImageClassifier):
    """All-CNN-C with configurable widths (``widths=(96, 192)`` in the paper)."""

    # All-CNN-C is one fixed table of nine convolutions: no argument sets its depth
    width_args = ("widths",)
    depth_args = ()

    def __init__(
        self,
        widths: tuple[int, int] = (96, 192),
        score_relu: bool = True,
        input_drop_rate: float = 0.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 32,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if len(widths) != 2 or min(widths) < 1:
            raise ValueError(
                f"widths must be two positive ints (96, 192 in the paper), got {widths}"
            )
        reject_drop_path(drop_path_rate, "AllConvNet")
        # two padded 3x3/2 convs give ceil(side / 4); the unpadded 3x3 needs 3 of those
        self.min_input_size = 9
        check_img_size(img_size, 1, "AllConvNet", min_size=self.min_input_size)
        w1, w2 = widths
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.score_relu = score_relu
        self.input_drop = nn.Dropout(input_drop_rate)
        self.block1 = nn.Sequential(
            _conv(in_chans, w1, 3),
            _conv(w1, w1, 3),
            _conv(w1, w1, 3, stride=2),
            nn.Dropout(drop_rate),
        )
        self.block2 = nn.Sequential(
            _conv(w1, w2, 3), _conv(w2, w2, 3), _conv(w2, w2, 3, stride=2), nn.Dropout(drop_rate)
        )
        self.block3 = nn.Sequential(_conv(w2, w2, 3, padding=0), _conv(w2, w2, 1))
        self.feature_info = [FeatureInfo(w1, 2, "block1"), FeatureInfo(w2, 4, "block2")]
        self.cam_target = "block3"
        self.num_features = w2
        self.reset_classifier(num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m.weight.device.type != "meta":
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def reset_classifier(self, num_classes: int) -> None:
        """The classifier is a 1x1 convolution to class scores, averaged over the map."""
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        self.num_classes = num_classes
        self.head = (
            nn.Conv2d(self.num_features, num_classes, 1) if num_classes > 0 else nn.Identity()
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.block3(self.block2(self.block1(self.input_drop(x))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if pre_logits or self.num_classes == 0:
            return x.mean((2, 3))
        x = self.head(x)
        if self.score_relu:
            x = F.relu(x)
        return x.mean((2, 3))


_ALLCNN = "Striving for Simplicity: The All Convolutional Net"


@register_model(
    ModelCard(
        "allconv",
        _ALLCNN,
        2015,
        "cnn",
        params_m=1.5608,
        top1=92.75,
        img_size=32,
        source="COMPUTED from the paper's Table 2 layer table (model C) at 1000 classes: "
        "1,560,808 weights and biases; the paper's Table 3 reports ~1.3M for its 10-class "
        "CIFAR-10 net (1,369,738 by the same computation). top1 is CIFAR-10 accuracy "
        "(error 7.25% with augmentation, Table 3), not ImageNet",
    )
)
def allconv_c(**kwargs: Any) -> AllConvNet:
    return build_model(AllConvNet, dict(drop_rate=0.5, input_drop_rate=0.2), kwargs)


@register_model(ModelCard("allconv", _ALLCNN, 2015, "cnn", scale="cpu", img_size=32))
def allconv_pico(**kwargs: Any) -> AllConvNet:
    """All-CNN-C's layout at widths 24/48 (about 0.09M parameters at 10 classes)."""
    return build_model(AllConvNet, dict(widths=(24, 48)), kwargs)
