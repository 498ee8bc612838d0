"""Inception-v3 / v4 / Inception-ResNet-v2: grids, widths, aux head, residual scaling."""

from __future__ import annotations

import pytest
import torch

from archbench.models import create_model
from archbench.models.inception import InceptionResBlock


@pytest.mark.parametrize(
    "name, widths",
    [
        ("inception_v3", (288, 768, 2048)),
        ("inception_v4", (384, 1024, 1536)),
        ("inception_resnet_v2", (320, 1088, 1536)),
    ],
)
def test_299_input_gives_35_17_8_grids(name, widths):
    with torch.device("meta"):
        model = create_model(name)
        x = model.stem(torch.empty(1, 3, 299, 299))
        sizes = []
        for stage in (model.stage1, model.stage2, model.stage3):
            x = stage(x)
            sizes.append((x.shape[1], x.shape[-1]))
    assert sizes == [(widths[0], 35), (widths[1], 17), (widths[2], 8)]


def test_v3_aux_head_is_optional_and_adds_the_released_parameters():
    with torch.device("meta"):
        plain = create_model("inception_v3")
        aux = create_model("inception_v3", aux_logits=True)
    n_plain = sum(p.numel() for p in plain.parameters())
    n_aux = sum(p.numel() for p in aux.parameters())
    assert n_plain == 23_834_568
    assert n_aux == 27_161_264
    with pytest.raises(ValueError, match="aux_logits"):
        create_model("inception_v3_pico", aux_logits=True)


def test_v3_aux_logits_are_kept_in_training_only():
    with torch.device("meta"):
        model = create_model("inception_v3", aux_logits=True, num_classes=11).train()
        model(torch.empty(2, 3, 299, 299))
        assert model.aux_out is not None and model.aux_out.shape == (2, 11)
        model.eval()
        model(torch.empty(2, 3, 299, 299))
    assert model.aux_out is None


def test_residual_branch_is_scaled_before_the_addition():
    model = create_model("inception_resnet_v2_pico").eval()
    block = model.stage2[1]
    assert isinstance(block, InceptionResBlock) and block.scale == pytest.approx(0.10)
    x = torch.randn(2, block.up.out_channels, 8, 8)
    with torch.no_grad():
        branch = block.up(block.branches(x))
        expected = torch.relu(x + 0.10 * branch)
        torch.testing.assert_close(block(x), expected)
        block.scale = 1.0
        assert not torch.allclose(block(x), expected)


def test_released_scales_and_last_block_is_linear():
    with torch.device("meta"):
        model = create_model("inception_resnet_v2")
    scales = [
        {b.scale for b in stage if isinstance(b, InceptionResBlock)}
        for stage in (model.stage1, model.stage2, model.stage3)
    ]
    assert scales == [{0.17}, {0.10}, {0.20}]
    blocks = [b for b in model.stage3 if isinstance(b, InceptionResBlock)]
    assert len(blocks) == 10
    assert isinstance(blocks[-1].act, torch.nn.Identity)
    assert all(isinstance(b.act, torch.nn.ReLU) for b in blocks[:-1])


def test_too_small_input_for_the_imagenet_stem_fails_clearly():
    with pytest.raises(ValueError, match="too small"):
        create_model("inception_v4", img_size=64)
    with pytest.raises(ValueError, match="unknown stem"):
        create_model("inception_v3", stem="tiny")


def test_conv_norm_act_same_padding_and_bias_rules():
    from archbench.layers.conv import ConvNormAct

    conv = ConvNormAct(4, 6, (1, 7))
    assert conv.conv.padding == (0, 3) and conv.conv.bias is None
    assert conv(torch.randn(1, 4, 9, 9)).shape == (1, 6, 9, 9)
    plain = ConvNormAct(4, 6, 3, norm=None, act=None)
    assert plain.conv.bias is not None and len(plain) == 1
    with pytest.raises(ValueError, match="groups"):
        ConvNormAct(4, 6, 3, groups=4)
