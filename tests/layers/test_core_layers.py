import math

import pytest
import torch
import torch.nn as nn

from archbench.layers import (
    Attention,
    DropPath,
    EfficientChannelAttn,
    LayerNorm2d,
    MetaFormerBlock,
    PatchEmbed,
    SqueezeExcite,
    StarReLU,
    create_act,
    create_attn,
    create_mixer,
    create_norm,
    drop_path_rates,
    reference_attention,
)


def test_layernorm2d_equals_channels_last_layernorm():
    x = torch.randn(2, 8, 5, 7)
    ln2d = LayerNorm2d(8)
    nn.init.normal_(ln2d.weight)
    nn.init.normal_(ln2d.bias)
    ref = nn.functional.layer_norm(x.permute(0, 2, 3, 1), (8,), ln2d.weight, ln2d.bias, 1e-6)
    torch.testing.assert_close(ln2d(x), ref.permute(0, 3, 1, 2))


def test_star_relu_formula():
    act = StarReLU()
    x = torch.tensor([-1.0, 0.0, 2.0])
    expected = 0.8944 * torch.relu(x) ** 2 - 0.4472
    torch.testing.assert_close(act(x), expected)


def test_factories_reject_unknown_names():
    with pytest.raises(ValueError, match="unknown norm"):
        create_norm("nope", 4)
    with pytest.raises(ValueError, match="unknown activation"):
        create_act("nope")
    with pytest.raises(ValueError, match="unknown attention layer"):
        create_attn("nope", 4)
    with pytest.raises(ValueError, match="unknown token mixer"):
        create_mixer("nope", 4)


def test_drop_path_is_identity_in_eval_and_unbiased_in_train():
    dp = DropPath(0.5)
    x = torch.ones(20000, 1)
    dp.eval()
    assert torch.equal(dp(x), x)
    dp.train()
    y = dp(x)
    assert set(y.unique().tolist()) <= {0.0, 2.0}
    assert y.mean().item() == pytest.approx(1.0, abs=0.05)


def test_drop_path_rates_split_by_stage():
    rates = drop_path_rates(0.3, [1, 2, 1])
    assert [len(r) for r in rates] == [1, 2, 1]
    assert rates[0][0] == 0.0 and rates[-1][-1] == pytest.approx(0.3)


def test_attention_matches_reference():
    attn = Attention(32, num_heads=4, qkv_bias=True).eval()
    x = torch.randn(2, 10, 32)
    q, k, v = attn.qkv_heads(x)
    ref = reference_attention(q, k, v).transpose(1, 2).reshape(2, 10, 32)
    torch.testing.assert_close(attn(x), attn.proj(ref), rtol=1e-5, atol=1e-5)


def test_attention_rejects_indivisible_width():
    with pytest.raises(ValueError, match="divisible"):
        Attention(30, num_heads=4)


def test_patch_embed_rejects_untileable_size():
    with pytest.raises(ValueError, match="cannot be tiled"):
        PatchEmbed(img_size=30, patch_size=16)
    pe = PatchEmbed(img_size=32, patch_size=8, in_chans=3, embed_dim=16)
    assert pe(torch.randn(1, 3, 32, 32)).shape == (1, 16, 16)
    with pytest.raises(ValueError, match="built for"):
        pe(torch.randn(1, 3, 64, 64))


def test_squeeze_excite_params_and_shape():
    se = SqueezeExcite(64)  # reduction 16 -> 4 hidden units
    assert sum(p.numel() for p in se.parameters()) == 64 * 4 + 4 + 4 * 64 + 64
    x = torch.randn(2, 64, 5, 5)
    assert se(x).shape == x.shape


@pytest.mark.parametrize("channels,kernel", [(64, 3), (256, 5), (512, 5), (2048, 7)])
def test_eca_kernel_size_rule(channels, kernel):
    # k = |log2(C)/gamma + b/gamma| rounded to the nearest odd number (gamma=2, b=1)
    eca = EfficientChannelAttn(channels)
    assert eca.kernel_size == kernel
    assert sum(p.numel() for p in eca.parameters()) == kernel
    t = int(abs((math.log2(channels) + 1) / 2))
    assert kernel == (t if t % 2 else t + 1)


def test_eca_is_a_gate_between_zero_and_one():
    eca = EfficientChannelAttn(16)
    x = torch.rand(2, 16, 4, 4) + 0.1
    y = eca(x)
    assert (y <= x + 1e-6).all() and (y >= 0).all()


@pytest.mark.parametrize("mixer", ["identity", "pooling", "random", "sepconv", "attention"])
def test_metaformer_block_keeps_shape_with_every_base_mixer(mixer):
    block = MetaFormerBlock(32, token_mixer=mixer, input_size=(6, 6), res_scale_init=1.0)
    x = torch.randn(2, 32, 6, 6)
    y = block(x)
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_pooling_mixer_is_zero_on_constant_input():
    mixer = create_mixer("pooling", 4)
    x = torch.full((1, 4, 5, 5), 3.0)
    torch.testing.assert_close(mixer(x), torch.zeros_like(x))


def test_random_mixer_is_frozen_and_row_stochastic():
    mixer = create_mixer("random", 4, input_size=(3, 3))
    assert not mixer.matrix.requires_grad
    torch.testing.assert_close(mixer.matrix.sum(-1), torch.ones(9))
    x = torch.ones(1, 4, 3, 3)
    torch.testing.assert_close(mixer(x), x)


def test_patch_embed_error_names_nearest_valid_sizes():
    with pytest.raises(ValueError, match="nearest valid for 230: 224 or 240"):
        PatchEmbed(img_size=230, patch_size=16)


def test_groupnorm1_nobias_has_scale_only_and_normalises_over_chw():
    norm = create_norm("groupnorm1_nobias", 6)
    assert norm.bias is None and norm.weight.shape == (6,) and norm.eps == 1e-6
    nn.init.normal_(norm.weight)
    x = torch.randn(2, 6, 3, 3) * 4 + 1
    mean = x.mean((1, 2, 3), keepdim=True)
    var = x.var((1, 2, 3), keepdim=True, unbiased=False)
    expected = (x - mean) / torch.sqrt(var + 1e-6) * norm.weight.view(1, -1, 1, 1)
    torch.testing.assert_close(norm(x), expected, rtol=1e-5, atol=1e-5)
    # the default GroupNorm1 keeps its bias
    assert create_norm("groupnorm1", 6).bias is not None


def test_metaformer_block_res_scale_scales_the_shortcut():
    block = MetaFormerBlock(8, token_mixer="identity", res_scale_init=1.0).eval()
    for p in block.mlp.parameters():
        nn.init.zeros_(p)
    # identity mixer: x + norm(x) in the first half, the zeroed MLP adds 0 in the second
    nn.init.constant_(block.res_scale1.scale, 0.5)
    nn.init.constant_(block.res_scale2.scale, 2.0)
    x = torch.randn(1, 8, 3, 3)
    with torch.no_grad():
        expected = 2.0 * (0.5 * x + block.norm1(x))
        torch.testing.assert_close(block(x), expected)
