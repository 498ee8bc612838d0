"""WideNet: one shared block across depth, individual LayerNorms, auxiliary loss."""

from __future__ import annotations

import torch

from archbench.models import create_model


def test_block_is_shared_and_norms_are_individual():
    with torch.device("meta"):
        shallow = create_model("widenet_pico", depth=2)
        deep = create_model("widenet_pico", depth=8)
    per_layer_norms = 2 * 2 * 96  # two LayerNorms (weight + bias) per layer
    n_shallow = sum(p.numel() for p in shallow.parameters())
    n_deep = sum(p.numel() for p in deep.parameters())
    assert n_deep - n_shallow == 6 * per_layer_norms
    assert len(deep.norms1) == 8 and deep.norms1[0] is not deep.norms1[1]


def test_shared_attention_is_called_once_per_layer():
    model = create_model("widenet_pico", num_classes=3).eval()
    calls = []
    model.attn.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert len(calls) == model.depth


def test_auxiliary_loss_is_exposed_and_trains_the_router():
    torch.manual_seed(0)
    model = create_model("widenet_pico", num_classes=3).train()
    out = model(torch.randn(2, 3, 32, 32))
    aux = model.aux_loss()
    # six layers, each loss >= 1 (1 = perfectly balanced), weighted by 0.01
    assert aux.item() >= 0.06 - 1e-6
    model.zero_grad()
    aux.backward(retain_graph=True)
    assert model.moe.router.weight.grad is not None
    assert model.moe.router.weight.grad.abs().sum() > 0
    assert out.shape == (2, 3)


def test_pos_embed_resizes_keeping_the_class_row():
    model = create_model("widenet_pico")
    pos = model.pos_embed.detach()
    bigger = model.resize_pos_embed(pos, (8, 8), (16, 16))
    assert bigger.shape == (1, 1 + 256, 96)
    torch.testing.assert_close(bigger[:, 0], pos[:, 0])
    big = create_model("widenet_pico", img_size=64)
    assert big.pos_embed.shape == bigger.shape
