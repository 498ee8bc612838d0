"""N2N: the reward, block states, student construction, policies, search end to end."""

from __future__ import annotations

import pytest
import torch
from _prune_helpers import tiny_context, tiny_data

from archbench import create_model
from archbench.compress import create_compressor
from archbench.compress.n2n import (
    RemovalPolicy,
    ShrinkPolicy,
    block_states,
    build_student,
    n2n_reward,
    residual_blocks,
)


def test_reward_by_hand():
    # C = 1 - 25/100 = 0.75 -> R_c = 0.75 * 1.25 = 0.9375; R_a = 0.6 / 0.8 = 0.75
    assert n2n_reward(25, 100, 0.6, 0.8) == pytest.approx(0.9375 * 0.75)
    assert n2n_reward(100, 100, 0.8, 0.8) == 0.0  # no compression, no reward


def _teacher():
    torch.manual_seed(0)
    return create_model("resnet_pico", num_classes=4, layers=(2, 1, 1, 1)).eval()


def test_block_states_and_removability():
    model = _teacher()
    names = [n for n, _ in residual_blocks(model)]
    assert names == ["layer1.0", "layer1.1", "layer2.0", "layer3.0", "layer4.0"]
    s = block_states(model)
    assert s.shape == (5, 5)
    assert s[:, 3].tolist() == [1.0, 1.0, 0.0, 0.0, 0.0]  # only same-shape blocks go
    assert s[2, 2].item() == 2.0 and s[2, 1].item() == 5.0  # stride 2, log2(32)
    # bottlenecks: stride on conv2, and a width-changing shortcut makes a block irremovable
    bott = block_states(create_model("resnet_pico", num_classes=4, block="bottleneck"))
    assert bott[:, 3].tolist() == [0.0] * 4 and bott[1:, 2].tolist() == [2.0] * 3


def test_student_removes_and_shrinks():
    model = _teacher()
    x = torch.randn(2, 3, 16, 16)
    keep = [True, False, True, True, True]
    student = build_student(model, keep, [1.0, 1.0, 0.5, 1.0, 0.25], x[:1])
    assert isinstance(student.layer1[1], torch.nn.Identity)
    assert student.layer2[0].conv1.out_channels == 16 and student.layer4[0].conv1.out_channels == 32
    # removing a block is exact: the student computes the teacher with that block skipped
    skipped = build_student(model, keep, [1.0] * 5, x[:1])
    ref = model.layer1[0](model.stem(x))
    for stage in (model.layer2, model.layer3, model.layer4):
        ref = stage(ref)
    assert torch.allclose(skipped.forward_features(x), ref, atol=1e-6)
    assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in model.parameters())


def test_policies_give_distributions():
    s = block_states(_teacher())
    p = RemovalPolicy()(s)
    assert p.shape == (5,) and ((p > 0) & (p < 1)).all()
    logp = ShrinkPolicy(4)(s)
    assert torch.allclose(logp.exp().sum(-1), torch.ones(5))


def test_n2n_end_to_end(tmp_path):
    data = tiny_data()
    res = create_compressor(
        "n2n", {"remove_episodes": 2, "shrink_episodes": 2, "student_epochs": 1}
    )(_teacher(), tiny_context(data, tmp_path))
    assert len(res.info["history"]) == 4
    assert res.info["params_ratio"] <= 1.0
    best = max(h["reward"] for h in res.info["history"])
    assert res.info["reward"] == pytest.approx(best)
    assert res.model.eval()(torch.randn(2, 3, 16, 16)).shape == (2, 4)


def test_bad_input():
    with pytest.raises(ValueError, match="shrink_ratios"):
        create_compressor("n2n", {"shrink_ratios": "0.5,1.5"})(
            _teacher(), tiny_context(tiny_data())
        )
    with pytest.raises(ValueError, match="residual blocks"):
        residual_blocks(create_model("vit_pico", num_classes=4))


def test_reinforce_moves_the_policy_toward_rewarded_actions():
    from archbench.compress.n2n import _reinforce

    torch.manual_seed(0)
    states = block_states(_teacher())
    removable = states[:, 3].bool()
    policy = RemovalPolicy()
    g = torch.Generator().manual_seed(0)

    def sample():
        p = policy(states)
        keep = torch.bernoulli(p.detach(), generator=g).bool() | ~removable
        logp = torch.where(keep, p, 1 - p).log()[removable].sum()
        return logp, (keep.tolist(), [1.0] * 5)

    class FakeSearch:  # reward: the number of removed blocks
        def score(self, keep, ratios):
            r = float(sum(not k for k in keep))
            return r, None, {"reward": r, "val_top1": 0.0}

    before = policy(states)[removable].mean().item()
    _reinforce(policy, sample, FakeSearch(), 40, 0.05, lambda line: None)
    assert policy(states)[removable].mean().item() < before - 0.2
