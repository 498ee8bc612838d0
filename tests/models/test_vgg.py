"""VGG: the paper's configurations D and E."""

from __future__ import annotations

import torch
import torch.nn as nn

from archbench.models import create_model


def _convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_weight_layer_counts_match_configs_d_and_e():
    for name, n_conv in (("vgg16", 13), ("vgg19", 16)):
        with torch.device("meta"):
            model = create_model(name)
        convs = _convs(model.stages)
        assert len(convs) == n_conv
        assert all(c.kernel_size == (3, 3) and c.stride == (1, 1) for c in convs)
        assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 5
        fc6, fc7 = _convs(model.fc)
        assert fc6.weight.shape == (4096, 512, 7, 7)  # FC over the 7x7x512 map
        assert fc7.weight.shape == (4096, 4096, 1, 1)
        assert model.head.weight.shape == (1000, 4096)


def test_224_input_gives_a_7x7_map_and_fc_features():
    with torch.device("meta"):
        model = create_model("vgg16")
        x = torch.empty(1, 3, 224, 224)
        assert model.stages(x).shape == (1, 512, 7, 7)
        assert model.forward_features(x).shape == (1, 4096, 1, 1)


def test_convolutional_fc_equals_flatten_and_linear():
    model = create_model("vgg_pico", fc_kernel=1, num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    fmap = model.stages(x).flatten(1)
    fc6, fc7 = model.fc[0], model.fc[3]
    h = torch.relu(fmap @ fc6.weight.flatten(1).T + fc6.bias)
    h = torch.relu(h @ fc7.weight.flatten(1).T + fc7.bias)
    torch.testing.assert_close(model(x), model.head(h))
