"""SP²OT: the partial transport's mass, its limit against the Hungarian optimum, the
progressive schedule, the semantic graph and a training run."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.optimize import linear_sum_assignment

from archbench.data import load_dataset
from archbench.models import create_model
from archbench.ssl.sp2ot import knn_similarity, progressive_partial_ot, rho_schedule
from archbench.train import create_task, fit, load_recipe


def test_transported_mass_is_rho_and_rows_at_most_one():
    cost = -torch.log_softmax(torch.randn(40, 5), dim=1)
    for rho in (0.1, 0.5, 1.0):
        plan = progressive_partial_ot(cost, rho)
        assert float(plan.sum()) / 40 == pytest.approx(rho, abs=1e-3)
        assert (plan.sum(1) <= 1 + 1e-4).all() and (plan >= 0).all()


def test_partial_transport_prefers_cheap_samples():
    # 10 samples; the first 3 are cheap for every cluster: they get the mass first
    cost = torch.full((10, 2), 3.0)
    cost[:3] = 0.0
    plan = progressive_partial_ot(cost, 0.3, epsilon=0.05, gamma=float("inf"))
    rows = plan.sum(1)
    assert float(rows[:3].min()) > 0.95 and float(rows[3:].max()) < 0.05


def test_full_mass_equality_limit_reaches_the_assignment_optimum():
    # rho = 1, gamma = inf (uniform cluster marginal), small epsilon: with n = k the plan is
    # doubly stochastic and its cost approaches the optimal permutation's, which the
    # Hungarian method finds independently
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        cost = torch.rand(4, 4, generator=g)
        plan = progressive_partial_ot(cost, 1.0, epsilon=0.005, gamma=float("inf"))
        assert torch.allclose(plan.sum(0), torch.ones(4), atol=3e-3)
        assert torch.allclose(plan.sum(1), torch.ones(4), atol=1e-3)
        rows, cols = linear_sum_assignment(cost.numpy())
        best = float(cost.numpy()[rows, cols].sum())
        assert float((plan * cost).sum()) == pytest.approx(best, abs=0.03)
        # a looser regularization costs more: the optimum is approached from above
        loose = progressive_partial_ot(cost, 1.0, epsilon=1.0, gamma=float("inf"))
        assert float((loose * cost).sum()) > best + 0.05


def test_kl_relaxation_allows_imbalanced_clusters():
    # every sample prefers cluster 0: the equality constraint forces balance,
    # the KL-relaxed marginal (gamma = 1) lets cluster 0 take more
    cost = torch.tensor([[0.0, 2.0]]).repeat(20, 1)
    balanced = progressive_partial_ot(cost, 1.0, gamma=float("inf")).sum(0) / 20
    relaxed = progressive_partial_ot(cost, 1.0, gamma=1.0).sum(0) / 20
    assert torch.allclose(balanced, torch.tensor([0.5, 0.5]), atol=1e-3)
    assert float(relaxed[0]) > 0.6


def test_rho_schedule_is_the_sigmoid_ramp():
    assert rho_schedule(0, 100) == pytest.approx(0.1 + 0.9 * math.exp(-5))
    assert rho_schedule(50, 100) == pytest.approx(0.1 + 0.9 * math.exp(-5 * 0.25))
    assert rho_schedule(100, 100) == pytest.approx(1.0)
    assert rho_schedule(500, 100) == pytest.approx(1.0)


def test_knn_graph_is_symmetric_with_the_nearest_neighbours():
    feats = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    sim = knn_similarity(feats, 1)
    assert torch.allclose(sim, sim.T)
    assert torch.all(sim.diagonal() == 0)
    assert sim[0, 1] > 0 and sim[2, 3] > 0 and sim[0, 2] == 0 and sim[1, 3] == 0
    # C's nearest is B but B's nearest is A: the edge B-C is kept both ways
    chain = knn_similarity(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.8, 0.3]]), 1)
    assert chain[1, 2] > 0 and chain[2, 1] > 0 and chain[0, 2] == 0


def test_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="rho"):
        progressive_partial_ot(torch.rand(3, 2), 0.0)
    with pytest.raises(ValueError, match="finite"):
        progressive_partial_ot(torch.tensor([[float("nan"), 1.0]]), 0.5)
    with pytest.raises(ValueError, match="clusters"):
        create_task("sp2ot", {"clusters": 1})


def test_fit_runs(tmp_path):
    data = load_dataset("shapes:n_train=32,n_val=16,n_test=16,img_size=16")
    model = create_model("resnet_pico", num_classes=data.num_classes, img_size=16)
    recipe = load_recipe("cpu-fast").replace(
        epochs=1, batch_size=16, warmup_epochs=0, task="sp2ot", task_args={"clusters": 4}
    )
    res = fit(model, data, recipe, tmp_path, progress=False)
    assert res.status == "completed"
    assert 0.1 <= res.history[-1]["train_rho"] <= 1.0


def test_semantic_term_is_the_linearized_graph_reward():
    from archbench.ssl.sp2ot import SP2OT

    g = torch.Generator().manual_seed(2)
    logits = torch.randn(12, 3, generator=g)
    feats = torch.randn(12, 5, generator=g)
    task = SP2OT(clusters=3, semantic_weight=0.5, neighbours=3, mm_steps=1)
    plan = task.pseudo_labels(logits, feats, 0.7)
    cost = -torch.log_softmax(logits.double(), dim=1)
    first = progressive_partial_ot(cost, 0.7)
    sim = knn_similarity(feats, 3).double()
    expected = progressive_partial_ot(cost - 0.5 * sim @ first.double(), 0.7)
    assert torch.allclose(plan, expected, atol=1e-5)
    assert not torch.allclose(plan, first, atol=1e-3)

    # neighbours pull each other's labels together: agreement along graph edges rises
    def agreement(p):
        return float((sim * (p.double() @ p.double().T)).sum())

    assert agreement(plan) > agreement(first)
