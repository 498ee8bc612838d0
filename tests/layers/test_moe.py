"""Mixture-of-experts FFN: reduces to an MLP, routes top-k, balances load."""

from __future__ import annotations

import pytest
import torch

from archbench.layers import Mlp
from archbench.layers.moe import MoEMlp, load_balancing_loss


def test_one_expert_is_a_plain_mlp():
    torch.manual_seed(0)
    moe = MoEMlp(16, 32, num_experts=1, top_k=1).eval()
    mlp = Mlp(16, 32)
    mlp.load_state_dict(moe.experts[0].state_dict())
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(moe(x), mlp(x))
    torch.testing.assert_close(moe.aux_loss, torch.tensor(1.0))


def test_output_is_gate_weighted_sum_of_the_top_k_experts():
    torch.manual_seed(0)
    moe = MoEMlp(8, 16, num_experts=4, top_k=2).eval()
    x = torch.randn(10, 8)
    probs = moe.router(x).softmax(-1)
    gates, idx = probs.topk(2, dim=-1)
    ref = torch.stack(
        [sum(gates[t, j] * moe.experts[int(idx[t, j])](x[t]) for j in range(2)) for t in range(10)]
    )
    torch.testing.assert_close(moe(x), ref, atol=1e-6, rtol=1e-5)


def test_capacity_drops_overflow_tokens_in_training():
    torch.manual_seed(0)
    moe = MoEMlp(8, 16, num_experts=2, top_k=1, capacity_factor=0.5, noise_std=0.0)
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0, 0] = 10.0  # every token with x[0] > 0 goes to expert 0
    x = torch.randn(40, 8)
    x[:, 0] = x[:, 0].abs() + 1  # all tokens prefer expert 0
    out = moe.train()(x)
    capacity = int(0.5 * 1 * 40 / 2)
    processed = (out.abs().sum(-1) > 0).sum().item()
    assert processed == capacity  # first `capacity` tokens kept, the rest dropped
    assert (out[capacity:] == 0).all()
    assert (moe.eval()(x).abs().sum(-1) > 0).all()  # no dropping at inference


def test_load_balancing_loss_is_one_when_uniform_and_larger_when_collapsed():
    t, e = 12, 4
    uniform_probs = torch.full((t, e), 1 / e)
    uniform_assign = torch.eye(e).repeat(t // e, 1)
    assert load_balancing_loss(uniform_probs, uniform_assign).item() == pytest.approx(1.0)
    collapsed_probs = torch.zeros(t, e)
    collapsed_probs[:, 0] = 1.0
    collapsed_assign = torch.zeros(t, e)
    collapsed_assign[:, 0] = 1.0
    assert load_balancing_loss(collapsed_probs, collapsed_assign).item() == pytest.approx(e)


def test_meta_dispatch_matches_shapes_and_bad_options_fail():
    with torch.device("meta"):
        moe = MoEMlp(8, 16, num_experts=4, top_k=2)
        assert moe(torch.empty(2, 3, 8)).shape == (2, 3, 8)
    with pytest.raises(ValueError, match="top_k"):
        MoEMlp(8, 16, num_experts=2, top_k=3)


def test_meta_flops_count_routed_not_dense_compute():
    from torch.utils.flop_counter import FlopCounterMode

    def flops(module, x):
        counter = FlopCounterMode(display=False)
        with counter:
            module(x)
        return counter.get_total_flops()

    with torch.device("meta"):
        moe = MoEMlp(16, 64, num_experts=4, top_k=2).eval()
        x = torch.empty(32, 16)
        routed = flops(moe, x)
        one_expert = flops(moe.experts[0], torch.empty(32 * 2, 16))  # T * k tokens in all
        router = flops(moe.router, x)
    assert routed == one_expert + router
