"""ResNet-RS: ResNet-D stem and shortcuts, SE in every bottleneck."""

from __future__ import annotations

import torch
import torch.nn as nn

from archbench.layers import SqueezeExcite
from archbench.models import create_model
from archbench.models.resnet_rs import SEBottleneck


def test_resnet_d_stem_and_shortcuts():
    with torch.device("meta"):
        model = create_model("resnetrs50")
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    stem_convs = [m for m in model.stem.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in stem_convs] == [
        (32, (3, 3), (2, 2)),
        (32, (3, 3), (1, 1)),
        (64, (3, 3), (1, 1)),
        (64, (3, 3), (2, 2)),
    ]
    block = model.stages[1][0]
    pool, proj = block.downsample
    assert isinstance(pool, nn.AvgPool2d) and pool.stride == 2
    assert proj.conv.stride == (1, 1) and proj.conv.kernel_size == (1, 1)
    assert block.conv1.conv.stride == (1, 1) and block.conv2.conv.stride == (2, 2)


def test_every_block_has_se_with_quarter_reduction():
    with torch.device("meta"):
        model = create_model("resnetrs101")
    blocks = [m for m in model.modules() if isinstance(m, SEBottleneck)]
    assert len(blocks) == 33
    for b in blocks:
        assert isinstance(b.se, SqueezeExcite)
        out = b.conv3.conv.out_channels
        assert b.se.fc1.out_channels == out // 4


def test_feature_map_at_160_is_5x5():
    with torch.device("meta"):
        model = create_model("resnetrs50")
        assert model.forward_features(torch.empty(1, 3, 160, 160)).shape == (1, 2048, 5, 5)
