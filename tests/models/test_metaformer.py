"""MetaFormer baselines: one block with a mixer per stage, and what each baseline is made of."""

import pytest
import torch
import torch.nn as nn

from archbench.layers import (
    AttentionMixer,
    GroupNorm1,
    IdentityMixer,
    LayerNorm2d,
    MetaFormerBlock,
    PoolingMixer,
    RandomMixer,
    SepConvMixer,
    SquaredReLU,
    StarReLU,
)
from archbench.models import create_model
from archbench.models.metaformer import MetaFormer, MlpHead

MIXER_CLASSES = {
    "identity": IdentityMixer,
    "random": RandomMixer,
    "pooling": PoolingMixer,
    "sepconv": SepConvMixer,
    "attention": AttentionMixer,
}


def _stage_mixers(model: MetaFormer) -> list[set[type]]:
    return [{type(b.token_mixer) for b in stage} for stage in model.stages]


@pytest.mark.parametrize("mixer", sorted(MIXER_CLASSES))
def test_block_with_each_mixer_mixes_tokens_exactly_when_it_should(mixer):
    block = MetaFormerBlock(
        16, token_mixer=mixer, input_size=(5, 5), norm="layernorm2d_nobias", res_scale_init=1.0
    ).eval()
    assert isinstance(block.token_mixer, MIXER_CLASSES[mixer])
    x = torch.randn(2, 16, 5, 5)
    x2 = x.clone()
    x2[:, :, 0, 0] += torch.randn(16)
    with torch.no_grad():
        y, y2 = block(x), block(x2)
    assert y.shape == x.shape and torch.isfinite(y).all()
    # a change at one position reaches the others only through the token mixer
    elsewhere = (y2 - y)[:, :, 2:, 2:].abs().max()
    if mixer == "identity":
        assert elsewhere == 0
    elif mixer == "pooling":  # 3x3 pooling: two blocks away is out of reach of one block
        assert elsewhere == 0 and (y2 - y)[:, :, 1, 1].abs().max() > 1e-5
    else:
        assert elsewhere > 1e-5


def test_caformer_uses_sepconv_then_attention_in_the_last_two_stages():
    with torch.device("meta"):
        model = create_model("caformer_s18")
    assert _stage_mixers(model) == [{SepConvMixer}, {SepConvMixer}, {AttentionMixer}] + [
        {AttentionMixer}
    ]
    assert [len(s) for s in model.stages] == [3, 3, 9, 3]
    attn = model.stages[2][0].token_mixer.attn
    assert attn.head_dim == 32 and attn.num_heads == 320 // 32
    pico = create_model("caformer_pico")
    assert _stage_mixers(pico)[2:] == [{AttentionMixer}, {AttentionMixer}]


@pytest.mark.parametrize(
    "name,mixers",
    [
        ("identityformer_s12", [IdentityMixer] * 4),
        ("randformer_s12", [IdentityMixer, IdentityMixer, RandomMixer, RandomMixer]),
        ("poolformerv2_s12", [PoolingMixer] * 4),
        ("convformer_s18", [SepConvMixer] * 4),
        ("identityformer_s18", [IdentityMixer] * 4),
        ("randformer_s18", [IdentityMixer, IdentityMixer, RandomMixer, RandomMixer]),
        ("poolformerv2_s18", [PoolingMixer] * 4),
    ],
)
def test_each_baseline_is_a_table_of_mixers(name, mixers):
    with torch.device("meta"):
        model = create_model(name)
    assert _stage_mixers(model) == [{m} for m in mixers]


def test_basic_baselines_norm_over_chw_without_bias_and_use_a_linear_head():
    with torch.device("meta"):
        model = create_model("poolformerv2_s12")
    block = model.stages[0][0]
    assert isinstance(block.norm1, GroupNorm1) and block.norm1.num_groups == 1
    assert block.norm1.bias is None and block.norm1.weight.shape == (64,)
    assert isinstance(block.mlp.act, StarReLU)
    assert block.mlp.fc1.bias is None and block.mlp.fc2.bias is None
    assert isinstance(model.head, nn.Linear)


def test_groupnorm1_nobias_normalises_each_sample_over_chw():
    model = create_model("identityformer_pico")
    norm = model.stages[0][0].norm1
    x = torch.randn(3, 32, 4, 4) * 5 + 2
    y = norm(x)
    flat = y.flatten(1)
    torch.testing.assert_close(flat.mean(1), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(flat.var(1, unbiased=False), torch.ones(3), atol=1e-3, rtol=0)


def test_convformer_and_caformer_use_bias_free_layernorm_and_an_mlp_head():
    model = create_model("caformer_pico", num_classes=10)
    block = model.stages[0][0]
    assert isinstance(block.norm1, LayerNorm2d) and block.norm1.bias is None
    assert isinstance(model.head, MlpHead)
    assert model.head.fc1.out_features == 4 * 256 and isinstance(model.head.act, SquaredReLU)
    assert model.head.fc2.out_features == 10
    model.reset_classifier(5)
    assert isinstance(model.head, MlpHead) and model.head.fc2.out_features == 5
    model.reset_classifier(0)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 256)


def test_stem_and_downsampling_follow_the_paper():
    with torch.device("meta"):
        model = create_model("convformer_s18")
    conv, norm = model.stem
    assert (conv.kernel_size, conv.stride, conv.padding) == ((7, 7), (4, 4), (2, 2))
    assert isinstance(norm, LayerNorm2d) and norm.bias is None
    for down in list(model.downsample)[1:]:
        norm, conv = down  # norm first, then the 3x3/2 convolution
        assert isinstance(norm, LayerNorm2d)
        assert (conv.kernel_size, conv.stride, conv.padding) == ((3, 3), (2, 2), (1, 1))
    assert [fi.reduction for fi in model.feature_info] == [4, 8, 16, 32]


def test_res_scale_only_in_the_last_two_stages_and_no_layer_scale():
    model = create_model("convformer_pico")
    for i, stage in enumerate(model.stages):
        for block in stage:
            has_res_scale = not isinstance(block.res_scale1, nn.Identity)
            assert has_res_scale == (i >= 2)
            assert isinstance(block.layer_scale1, nn.Identity)
            if has_res_scale:
                torch.testing.assert_close(
                    block.res_scale1.scale, torch.ones_like(block.res_scale1.scale)
                )


def test_randformer_matrices_are_frozen_parameters_counted_apart():
    with torch.device("meta"):
        model = create_model("randformer_s12")
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # six 14x14 blocks and two 7x7 blocks at 224px: the paper's "+ 0.2M"
    assert total - trainable == 6 * 196**2 + 2 * 49**2
    assert round(trainable / 1e6, 1) == 11.9
    card = model.model_card
    assert card.extra["trainable_params_m"] == 11.9 and card.extra["frozen_params_m"] == 0.2


def test_randformer_matrix_does_not_change_in_training():
    model = create_model("randformer_pico", num_classes=3)
    mixer = model.stages[2][0].token_mixer
    assert not mixer.matrix.requires_grad
    assert mixer.matrix.shape == (16, 16)  # the 4x4 grid of stage 3 at 32px
    before = mixer.matrix.detach().clone()
    other = model.stem[0].weight.detach().clone()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.5)
    for _ in range(2):
        opt.zero_grad()
        nn.functional.cross_entropy(
            model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 0])
        ).backward()
        opt.step()
    assert torch.equal(mixer.matrix, before)
    assert not torch.equal(model.stem[0].weight, other)
    assert any(k.endswith("token_mixer.matrix") for k in model.state_dict())


def test_randformer_is_tied_to_its_img_size():
    model = create_model("randformer_pico").eval()
    with pytest.raises(ValueError, match="built for img_size"):
        model(torch.randn(1, 3, 64, 64))
    # the other baselines take other sizes
    other = create_model("poolformerv2_pico").eval()
    with torch.no_grad():
        assert other(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_bad_tables_fail_clearly():
    with pytest.raises(ValueError, match="unknown token mixer 'conv'"):
        MetaFormer(token_mixers=("identity", "conv", "identity", "identity"))
    with pytest.raises(ValueError, match="one entry per stage"):
        MetaFormer(token_mixers=("identity", "identity"))
    with pytest.raises(ValueError, match="head must be"):
        MetaFormer(head="conv")


def test_layernorm_epsilons_follow_the_release():
    # metaformer_baselines.py: output norm partial(nn.LayerNorm, eps=1e-6); the MLP head's
    # norm is a plain nn.LayerNorm (eps 1e-5); stem and downsampling norms eps 1e-6
    with torch.device("meta"):
        conv = create_model("convformer_s18")
        ident = create_model("identityformer_s12")
    for model in (conv, ident):
        assert model.norm.eps == 1e-6
        assert model.stem[1].eps == 1e-6 and model.downsample[1][0].eps == 1e-6
    assert isinstance(conv.head, MlpHead) and conv.head.norm.eps == 1e-5
    assert isinstance(ident.head, nn.Linear)
