"""MLP-Mixer: what each MLP mixes, parameter formula, size checks."""

import pytest
import torch
import torch.nn as nn

from archbench.models import create_model
from archbench.models.mlp_mixer import MixerBlock


def _zero_mlp(mlp: nn.Module) -> None:
    for p in mlp.parameters():
        nn.init.zeros_(p)


def test_token_mixing_mlp_mixes_tokens_and_is_shared_over_channels():
    block = MixerBlock(dim=6, num_tokens=5, tokens_mlp_dim=7, channels_mlp_dim=9).eval()
    assert block.mlp_tokens.fc1.weight.shape == (7, 5)  # acts on the token axis
    _zero_mlp(block.mlp_channels)
    x = torch.randn(2, 5, 6)
    perm = torch.randperm(6)
    with torch.no_grad():
        y = block(x)
        # same weights for every channel: permuting channels commutes with the block
        torch.testing.assert_close(block(x[:, :, perm]), y[:, :, perm])
        # a change in one token reaches the others
        x2 = x.clone()
        x2[:, 0] += torch.randn(6)
        assert (block(x2)[:, 1:] - y[:, 1:]).abs().max() > 1e-4


def test_channel_mixing_mlp_is_shared_over_tokens():
    block = MixerBlock(dim=6, num_tokens=5, tokens_mlp_dim=7, channels_mlp_dim=9).eval()
    assert block.mlp_channels.fc1.weight.shape == (9, 6)
    _zero_mlp(block.mlp_tokens)
    x = torch.randn(2, 5, 6)
    perm = torch.randperm(5)
    with torch.no_grad():
        y = block(x)
        torch.testing.assert_close(block(x[:, perm]), y[:, perm])
        x2 = x.clone()
        x2[:, 0] += torch.randn(6)
        # with token mixing off, other tokens are untouched
        torch.testing.assert_close(block(x2)[:, 1:], y[:, 1:])


def test_parameter_count_formula():
    # per layer: 2 LNs (4C) + token MLP (S*Ds + Ds + Ds*S + S) + channel MLP (C*Dc + Dc + Dc*C + C)
    c, s, ds, dc, depth, p = 512, 196, 256, 2048, 8, 16
    layer = 4 * c + (2 * s * ds + ds + s) + (2 * c * dc + dc + c)
    total = (3 * p * p * c + c) + depth * layer + 2 * c + (c * 1000 + 1000)
    with torch.device("meta"):
        model = create_model("mixer_s16_224")
    assert sum(q.numel() for q in model.parameters()) == total == 18_528_264


def test_sizes_are_fixed_by_the_token_mlp():
    with pytest.raises(ValueError, match="nearest valid: 32 or 36"):
        create_model("mixer_pico", img_size=33)
    model = create_model("mixer_pico").eval()
    with pytest.raises(ValueError, match="built for img_size"):
        model(torch.randn(1, 3, 36, 36))
    assert create_model("mixer_pico", img_size=48).blocks[0].mlp_tokens.fc1.in_features == 144


def test_head_starts_at_zero_and_features_are_a_grid():
    model = create_model("mixer_pico", num_classes=4).eval()
    assert torch.count_nonzero(model.head.weight) == 0
    with torch.no_grad():
        tokens = model.forward_features(torch.randn(2, 3, 32, 32))
    assert tokens.shape == (2, 64, 128)
    fmap = model.tokens_to_map(tokens)
    assert fmap.shape == (2, 128, 8, 8)
    torch.testing.assert_close(fmap[:, :, 0, 1], tokens[:, 1])
