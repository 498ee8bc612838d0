"""All-CNN-C: pooling replaced by strided convolutions, convolutional classifier."""

from __future__ import annotations

import torch
import torch.nn as nn

from archbench.models import create_model


def test_no_pooling_layers_and_two_strided_convs():
    model = create_model("allconv_c", num_classes=10)
    assert not any(isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) for m in model.modules())
    strided = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]
    assert len(strided) == 2
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 9


def test_cifar10_parameter_count_from_the_layer_table():
    # 3x3 conv 96 x3, 3x3 conv 192 x4 (last unpadded), 1x1 conv 192, 1x1 conv 10, biases
    model = create_model("allconv_c", num_classes=10)
    assert sum(p.numel() for p in model.parameters()) == 1_369_738


def test_classifier_averages_over_6x6_and_scores_are_relu():
    model = create_model("allconv_pico", num_classes=10).eval()
    x = torch.randn(3, 3, 32, 32)
    feats = model.forward_features(x)
    assert feats.shape[-2:] == (6, 6)
    logits = model(x)
    assert (logits >= 0).all()
    expected = torch.relu(model.head(feats)).mean((2, 3))
    torch.testing.assert_close(logits, expected)
