"""RaftMLP: raft token mixing mixes along one axis only, across channels of a raft."""

from __future__ import annotations

import torch

from archbench.models.raftmlp import RaftTokenMixing


def test_vertical_mixing_stays_in_its_column_and_raft():
    mix = RaftTokenMixing(8, (5, 6), raft_size=2, axis="vertical", ratio=2.0).eval()
    torch.nn.init.ones_(mix.norm.weight)
    x = torch.randn(1, 8, 5, 6, requires_grad=True)
    out = mix(x)
    (g,) = torch.autograd.grad(out[0, 1, 2, 3], x)  # channel 1 = raft 0, index 1
    touched = g[0].abs().sum(0) > 0
    assert touched[:, 3].all() and not touched[:, [0, 1, 2, 4, 5]].any()  # one column
    # the MLP sees channel index 1 of both rafts (channels 1 and 5); LayerNorm adds others
    mlp_in = mix.mlp[0].in_features
    assert mlp_in == 2 * 5


def test_horizontal_mixing_stays_in_its_row():
    mix = RaftTokenMixing(8, (5, 6), raft_size=4, axis="horizontal", ratio=1.0).eval()
    x = torch.randn(1, 8, 5, 6, requires_grad=True)
    (g,) = torch.autograd.grad(mix(x)[0, 0, 2, 1], x)
    touched = g[0].abs().sum(0) > 0
    assert touched[2].all() and not touched[[0, 1, 3, 4]].any()


def test_cross_scale_embedding_equals_unfold_then_linear():
    from archbench.models.raftmlp import CrossScaleEmbedding

    emb = CrossScaleEmbedding(3, 5, (2, 4))
    x = torch.randn(1, 3, 8, 8)
    cols = [torch.nn.functional.unfold(x, k, padding=(k - 2) // 2, stride=2) for k in (2, 4)]
    weight = torch.cat([c.weight.flatten(1) for c in emb.convs], dim=1)
    expected = (weight @ torch.cat(cols, dim=1)).view(1, 5, 4, 4)
    expected = expected + emb.convs[0].bias.view(1, 5, 1, 1)
    torch.testing.assert_close(emb(x), expected, rtol=1e-5, atol=1e-5)
