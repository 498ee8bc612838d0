"""Context clusters: points join one centre, and clusters only mix within themselves."""

from __future__ import annotations

import torch

from archbench.layers.context_cluster import ContextCluster
from archbench.models import create_model


def test_cluster_output_is_constant_within_a_cluster_before_projection():
    torch.manual_seed(0)
    mixer = ContextCluster(8, heads=1, head_dim=4, proposal=2, fold=1)
    # identity-like value/similarity so that the dispatched value equals s_i * centre value
    x = torch.randn(1, 8, 6, 6)
    y = mixer(x)
    assert y.shape == x.shape
    mixer.proj = torch.nn.Identity()
    out = mixer(x)[0].flatten(1)  # (c, N)
    feat = mixer.f(x)
    centres = torch.nn.functional.adaptive_avg_pool2d(feat, 2).flatten(2)[0].T
    cos = (
        torch.nn.functional.normalize(centres, dim=-1)
        @ torch.nn.functional.normalize(feat.flatten(2)[0].T, dim=-1).T
    )
    assign = cos.argmax(0)
    sim = torch.sigmoid(mixer.sim_beta + mixer.sim_alpha * cos.max(0).values)
    for k in assign.unique():
        members = (assign == k).nonzero().flatten()
        ratio = out[:, members] / sim[members]
        torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-4, atol=1e-5)


def test_folded_regions_do_not_talk():
    mixer = ContextCluster(8, heads=2, head_dim=4, proposal=1, fold=2)
    x = torch.randn(1, 8, 4, 4, requires_grad=True)
    (g,) = torch.autograd.grad(mixer(x)[0, :, 0, 0].sum(), x)
    assert g[0, :, 2:, 2:].abs().sum() == 0 and g[0, :, :2, :2].abs().sum() > 0


def test_model_sees_positions():
    model = create_model("coc_pico").eval()
    assert model.stem.in_channels == 5
