"""DiT dynamic token routing: stopped tokens are left alone by later blocks (against a
written-out routing loop), hard argmax gates in eval, straight-through Gumbel gates in
training, the budget constraint against its formula with MACs checked by torch's flop
counter, and the PVTv2 trunk against the PVTv2 paper's parameter counts."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from archbench.models import create_model
from archbench.models.dit_routing import (
    EXIT,
    KEEP,
    DynamicTokenRoutingViT,
    RoutedBlock,
    RoutingGate,
)


def _pico(**kwargs) -> DynamicTokenRoutingViT:
    torch.manual_seed(0)
    return create_model("dit_pico", num_classes=5, **kwargs)


def _route_on_channel(model: DynamicTokenRoutingViT, stage: int, block: int, channel: int):
    """Make a gate keep exactly the tokens whose ``channel`` is positive."""
    fc = model.stages[stage].blocks[block].gate.fc
    with torch.no_grad():
        fc.weight.zero_()
        fc.bias.zero_()
        fc.weight[KEEP, channel] = 10.0


def test_stopped_tokens_are_left_alone_by_later_blocks():
    model = _pico().eval()
    stage = model.stages[1]  # two blocks on an 8x8 grid at 32x32
    _route_on_channel(model, 1, 0, channel=0)
    _route_on_channel(model, 1, 1, channel=1)
    seen: dict[str, torch.Tensor] = {}
    stage.embed_norm.register_forward_hook(lambda m, i, o: seen.__setitem__("embedded", o))
    stage.norm.register_forward_hook(lambda m, i, o: seen.__setitem__("routed", i[0]))
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))

        # written-out routing: a token stops at its first "exit" and keeps its features
        x, hw = seen["embedded"], (8, 8)
        keep = torch.ones(x.shape[:2], dtype=torch.bool)
        decisions = []
        for blk in stage.blocks:
            logits = x @ blk.gate.fc.weight.T + blk.gate.fc.bias
            keep = keep & (logits[..., KEEP] > logits[..., EXIT])
            decisions.append(keep)
            x = torch.where(keep.unsqueeze(-1), blk.block(x, hw), x)
    torch.testing.assert_close(seen["routed"], x, rtol=0, atol=1e-6)
    assert torch.equal(stage.last_keep.bool(), torch.stack(decisions, -1))
    stopped_first = ~decisions[0]
    assert 0 < stopped_first.sum() < stopped_first.numel(), "need both kinds of token"
    # tokens that stopped at the first block are bit-for-bit their embeddings
    assert torch.equal(seen["routed"][stopped_first], seen["embedded"][stopped_first])
    # the keep masks only ever drop tokens along depth
    assert (stage.last_keep[..., 1] <= stage.last_keep[..., 0]).all()
    # tokens that kept going were changed
    assert not torch.allclose(seen["routed"][decisions[1]], seen["embedded"][decisions[1]])


def test_eval_gates_take_the_hard_argmax():
    gate = RoutingGate(6).eval()
    with torch.no_grad():
        gate.fc.weight.normal_()
        gate.fc.bias.normal_()
    x = torch.randn(3, 10, 6)
    logits = x @ gate.fc.weight.T + gate.fc.bias
    expected = (logits[..., 1] > logits[..., 0]).float()
    assert torch.equal(gate(x), expected)
    assert torch.equal(gate(x), gate(x))
    assert 0 < expected.sum() < expected.numel()


def test_training_gates_sample_gumbel_decisions_with_straight_through_gradients():
    gate = RoutingGate(1, tau=1.0).train()
    with torch.no_grad():
        gate.fc.weight.zero_()
        gate.fc.bias.copy_(torch.tensor([0.0, 0.5]))  # P(keep) = sigmoid(0.5) by Gumbel-max
    torch.manual_seed(0)
    x = torch.zeros(1, 20000, 1)
    keep = gate(x)
    assert set(keep.unique().tolist()) <= {0.0, 1.0}, "the forward pass uses hard decisions"
    expected = torch.sigmoid(torch.tensor(0.5)).item()
    assert abs(keep.mean().item() - expected) < 0.015  # ~4 standard errors
    keep.sum().backward()
    # straight-through: the soft sample's gradient reaches the gate (+ on keep, - on exit)
    grad = gate.fc.bias.grad
    assert grad[KEEP] > 0 and grad[EXIT] < 0
    torch.testing.assert_close(grad[KEEP], -grad[EXIT])


def _written_out_macs(blk: RoutedBlock, hw: tuple[int, int]) -> float:
    """Block MACs on a batch of one: torch's counter (linear layers and convolutions) plus
    the two attention products, q k^T and attn v, that its SDPA path does not count."""
    n = hw[0] * hw[1]
    kv = (hw[0] // blk.sr_ratio) * (hw[1] // blk.sr_ratio) if blk.sr_ratio > 1 else n
    with FlopCounterMode(display=False) as counter:
        blk.block(torch.randn(1, n, blk.dim), hw)
    return counter.get_total_flops() / 2 + 2 * n * kv * blk.dim


def test_budget_loss_matches_its_formula():
    model = _pico(budget=0.4, budget_weight=3.0).train()
    torch.manual_seed(1)
    model(torch.randn(2, 3, 32, 32))
    used = total = 0.0
    for stage, hw in zip(model.stages, [(16, 16), (8, 8), (4, 4), (2, 2)], strict=True):
        for j, blk in enumerate(stage.blocks):
            macs = _written_out_macs(blk, hw) / (hw[0] * hw[1])
            assert blk.macs_per_token(hw) == pytest.approx(macs, rel=1e-9)
            used += macs * stage.last_keep[..., j].float().mean().item()
            total += macs
    fraction = used / total
    assert model.executed_fraction().item() == pytest.approx(fraction, rel=1e-5)
    assert 0.0 < fraction < 1.0
    assert model.aux_loss().item() == pytest.approx(3.0 * (fraction - 0.4) ** 2, rel=1e-5)
    model.eval()
    assert model.aux_loss() is None
    assert _pico(budget_weight=0.0).train().aux_loss() is None


def test_budget_loss_trains_the_gates_towards_the_budget():
    model = _pico(budget=0.2)
    gates = [p for n, p in model.named_parameters() if ".gate." in n]
    opt = torch.optim.SGD(gates, lr=20.0)
    x = torch.randn(4, 3, 32, 32)
    model.train()
    torch.manual_seed(2)
    fractions = []
    for _ in range(12):
        model(x)
        loss = model.aux_loss()
        fractions.append(model.executed_fraction().item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert fractions[0] > 0.7
    assert sum(fractions[-3:]) / 3 < fractions[0] - 0.2


# PVTv2 paper, Table 1 of its b-variants: parameters (M)
PVT_V2 = {"dit_b1": 14.0, "dit_b2": 25.4, "dit_b3": 45.2, "dit_b4": 62.6, "dit_b5": 82.0}


@pytest.mark.parametrize("name", sorted(PVT_V2))
def test_trunk_is_pvt_v2_and_gates_are_two_logits_per_block(name):
    with torch.device("meta"):
        model = create_model(name)
    gates = sum(p.numel() for n, p in model.named_parameters() if ".gate." in n)
    blocks = [b for s in model.stages for b in s.blocks]
    assert gates == sum(2 * b.dim + 2 for b in blocks)
    trunk = sum(p.numel() for p in model.parameters()) - gates
    assert abs(trunk / 1e6 / PVT_V2[name] - 1) < 0.005


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(budget=0.0), "budget is a fraction"),
        (dict(budget=1.5), "budget is a fraction"),
        (dict(budget_weight=-1.0), "budget_weight"),
        (dict(gate_tau=0.0), "temperature"),
        (dict(depths=(1, 1, 1)), "one entry per stage"),
    ],
)
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_model("dit_pico", **kwargs)
