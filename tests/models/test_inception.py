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
    # the release repeats block8 nine times at 0.20 and adds a final block8 with the
    # default scale 1.0 and no activation
    assert scales == [{0.17}, {0.10}, {0.20, 1.0}]
    blocks = [b for b in model.stage3 if isinstance(b, InceptionResBlock)]
    assert len(blocks) == 10
    assert [b.scale for b in blocks] == [0.20] * 9 + [1.0]
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


def test_last_block_adds_its_branch_unscaled_and_linearly():
    model = create_model("inception_resnet_v2_pico").eval()
    block = [b for b in model.stage3 if isinstance(b, InceptionResBlock)][-1]
    x = torch.randn(2, block.up.out_channels, 8, 8)
    with torch.no_grad():
        expected = x + block.up(block.branches(x))
        torch.testing.assert_close(block(x), expected)


def test_v3_aux_loss_is_weighted_soft_cross_entropy_added_by_the_task():
    from types import SimpleNamespace

    from archbench.train.tasks import Batch, ClassificationTask

    torch.manual_seed(0)
    model = create_model("inception_v3", aux_logits=True, num_classes=5).train()
    assert model.aux_weight == 0.4
    # cheap stand-ins for the trunk (the real one takes seconds on a CPU): 768 channels on
    # a 17x17 grid feed the real auxiliary head, 2048 channels the real classifier
    model.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 768, 1), torch.nn.AdaptiveAvgPool2d(17))
    model.stage1 = model.stage2 = torch.nn.Identity()
    model.stage3 = torch.nn.Conv2d(768, 2048, 1)
    images = torch.randn(2, 3, 80, 80)
    labels = torch.tensor([1, 3])
    targets = torch.full((2, 5), 0.025)
    targets[torch.arange(2), labels] = 0.9
    batch = Batch(views=[images], targets=targets, labels=labels, index=torch.arange(2))
    out = ClassificationTask().step(batch, SimpleNamespace(model=model))
    aux_logits = model.aux_out
    assert aux_logits is not None and aux_logits.shape == (2, 5)
    # the paper's auxiliary objective written out: 0.4 * mean_i sum_k -t_ik log softmax(a_i)_k
    p = aux_logits.detach().double().softmax(-1)
    expected_aux = 0.4 * -(targets.double() * p.log()).sum(-1).mean()
    torch.testing.assert_close(out["aux_loss"].double(), expected_aux)
    torch.testing.assert_close(out["loss"].detach(), out["ce"] + out["aux_loss"])
    # the auxiliary head receives gradient from the loss the engine minimises
    out["loss"].backward()
    assert model.aux.fc.weight.grad is not None and model.aux.fc.weight.grad.abs().sum() > 0
    model.eval()
    assert model.aux_loss(targets) is None
    with pytest.raises(ValueError, match="aux_weight"):
        create_model("inception_v3", aux_logits=True, aux_weight=-1.0)


def test_pool_branch_average_leaves_padding_out_like_the_release():
    # TensorFlow's SAME-padded 3x3 average pool divides each corner by its 4 valid pixels
    model = create_model("inception_v3_pico")
    pool = model.stage1[0].branches[-1][0]
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    y = pool(x)
    assert y[0, 0, 0, 0].item() == pytest.approx((0 + 1 + 4 + 5) / 4)
    assert y[0, 0, 1, 1].item() == pytest.approx(x[0, 0, :3, :3].mean().item())
