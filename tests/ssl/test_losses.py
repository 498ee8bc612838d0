"""The methods' losses on tiny batches against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from archbench.ssl.simclr import nt_xent
from archbench.ssl.swav import sinkhorn_knopp


def test_nt_xent_identical_views_of_orthogonal_embeddings():
    b, tau = 4, 0.5
    z = torch.eye(b, 6) * 3.0  # orthogonal, not unit length: the loss normalizes
    # each anchor: positive similarity 1, its 2B - 2 negatives 0
    expected = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + (2 * b - 2)))
    assert nt_xent(z, z.clone(), tau).item() == pytest.approx(expected, rel=1e-6)


def test_nt_xent_matches_the_formula_on_random_embeddings():
    g = torch.Generator().manual_seed(0)
    z1, z2, tau = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g), 0.2
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    total = 0.0
    for i in range(6):
        pos = (i + 3) % 6
        num = math.exp(float(z[i] @ z[pos]) / tau)
        den = sum(math.exp(float(z[i] @ z[j]) / tau) for j in range(6) if j != i)
        total += -math.log(num / den)
    assert nt_xent(z1, z2, tau).item() == pytest.approx(total / 6, rel=1e-5)


def test_nt_xent_exclusion_drops_same_pseudo_class_negatives():
    b, tau = 4, 0.5
    z = torch.eye(b, 6)
    z2 = z.clone()
    z2[1] = z[0]  # image 1's second view looks like image 0
    same = torch.tensor([0, 0, 1, 2])  # images 0 and 1 share a pseudo-class
    exclude = same.view(-1, 1) == same.view(1, -1)
    # anchor 0 (view 1): positive z2[0] (sim 1); negatives without images 0 and 1 -> 4 of 0
    e = math.exp(1 / tau)
    loss0 = -math.log(e / (e + 4))
    plain = nt_xent(z, z2, tau)
    guided = nt_xent(z, z2, tau, exclude)
    assert guided.item() < plain.item()
    # recompute the whole guided loss by hand
    zz = F.normalize(torch.cat([z, z2]), dim=1)
    img = torch.arange(8) % 4
    total = 0.0
    for i in range(8):
        pos = (i + 4) % 8
        den = sum(
            math.exp(float(zz[i] @ zz[j]) / tau)
            for j in range(8)
            if j != i and (j == pos or same[img[i]] != same[img[j]])
        )
        total += -math.log(math.exp(float(zz[i] @ zz[pos]) / tau) / den)
    assert guided.item() == pytest.approx(total / 8, rel=1e-5)
    assert -math.log(e / (e + 4)) == pytest.approx(loss0)


def test_sinkhorn_gives_equal_partition():
    g = torch.Generator().manual_seed(0)
    b, k = 12, 4
    scores = torch.randn(b, k, generator=g) * 0.5
    scores[:, 0] += 2.0  # every sample prefers prototype 0
    q = sinkhorn_knopp(scores, eps=0.5, iterations=200)
    torch.testing.assert_close(q.sum(1), torch.ones(b))  # a distribution per sample
    torch.testing.assert_close(q.sum(0), torch.full((k,), b / k), atol=1e-4, rtol=0)
    assert q.argmax(1).bincount(minlength=k).min() >= 1  # not everything on prototype 0
    # the official 3 iterations already move most of the way from the softmax
    soft = F.softmax(scores / 0.5, dim=1).sum(0)
    q3 = sinkhorn_knopp(scores, eps=0.5, iterations=3).sum(0)
    assert (q3 - b / k).abs().max() < 0.5 * (soft - b / k).abs().max()


def test_sinkhorn_one_iteration_by_hand():
    scores = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    eps = 1.0
    q = torch.exp(scores / eps).T  # (K, B)
    q = q / q.sum()
    q = q / q.sum(1, keepdim=True) / 2
    q = q / q.sum(0, keepdim=True) / 3
    torch.testing.assert_close(sinkhorn_knopp(scores, eps, 1), (q * 3).T)
