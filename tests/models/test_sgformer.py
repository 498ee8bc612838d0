"""SG-Former: significance from hybrid-scale attention, token reallocation, counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from archbench.models import create_model, get_model_card
from archbench.models.sgformer import SGAttention, merge_by_significance


def _lin(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    return x @ layer.weight.T + layer.bias


def _merged(x: torch.Tensor, order: list[int], mergers: nn.ModuleList, sizes: list[int]):
    """Consecutive runs of the sorted tokens, each merged by sum_t w_t x_t + b."""
    out, pos = [], 0
    for size, merger in zip(sizes, mergers):
        g = merger.in_features
        for start in range(pos, pos + size, g):
            run = x[order[start : start + g]]  # (g, C)
            out.append((merger.weight[0][:, None] * run).sum(0) + merger.bias)
        pos += size
    return torch.stack(out)


def test_tokens_merged_by_significance():
    torch.manual_seed(0)
    x = torch.randn(1, 16, 3)
    sig = torch.randn(1, 16)
    mergers = nn.ModuleList(nn.Linear(g, 1) for g in (4, 2, 1))
    got = merge_by_significance(x, sig, mergers)
    order = sorted(range(16), key=lambda n: sig[0, n].item())
    # least significant quarter: 4 tokens -> 1; middle half: 8 -> 4; top quarter kept (4)
    want = _merged(x[0], order, mergers, [4, 8, 4])
    assert got.shape == (1, 9, 3)
    torch.testing.assert_close(got[0], want)


def test_hybrid_attention_significance_and_output_written_out():
    torch.manual_seed(0)
    attn = SGAttention(8, 2, "hybrid", sr_ratio=2, window_size=2).eval()
    h = w = 4
    x = torch.randn(1, h * w, 8)
    out, sig = attn(x, h, w)
    # global half: one head over the 2x2-strided conv of the map (LayerNorm, GELU)
    red = F.conv2d(x.transpose(1, 2).reshape(1, 8, h, w), attn.sr.weight, attn.sr.bias, stride=2)
    red = F.gelu(
        F.layer_norm(red.flatten(2).transpose(1, 2), (8,), attn.norm.weight, attn.norm.bias)
    )
    k1, v1 = _lin(red, attn.kv1).chunk(2, -1)
    a1 = torch.softmax(_lin(x, attn.q1) @ k1.transpose(1, 2) / 2.0, -1)  # (1, 16, 4)
    x1 = a1 @ v1
    # local half: one head inside each 2x2 window
    q2 = _lin(x, attn.q2)
    k2, v2 = _lin(x, attn.kv2).chunk(2, -1)
    x2 = torch.zeros(1, 16, 4)
    local = torch.zeros(16)
    for wi in range(2):
        for wj in range(2):
            idx = [(2 * wi + a) * w + 2 * wj + b for a in range(2) for b in range(2)]
            a2 = torch.softmax(q2[0, idx] @ k2[0, idx].T / 2.0, -1)
            x2[0, idx] = a2 @ v2[0, idx]
            local[idx] = a2.mean(0)  # attention each pixel receives in its window
    region = [(n // w // 2) * 2 + (n % w) // 2 for n in range(16)]
    glob = a1[0].mean(0)[region]  # attention its 2x2 region receives globally
    torch.testing.assert_close(sig[0], local + glob)
    lepe = F.conv2d(
        _lin(x, attn.lepe_linear).transpose(1, 2).reshape(1, 8, h, w),
        attn.lepe_conv.weight,
        attn.lepe_conv.bias,
        padding=1,
        groups=8,
    )
    want = _lin(torch.cat([x1, x2], -1) + lepe.flatten(2).transpose(1, 2), attn.proj)
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-6)


def test_guided_attention_uses_row_and_column_major_reallocations():
    torch.manual_seed(0)
    attn = SGAttention(8, 2, "guided", sr_ratio=2, merge_groups=(4, 2)).eval()
    h = w = 4
    x = torch.randn(1, 16, 8)
    sig = torch.randint(0, 3, (1, 16)).float()  # ties: the two orders differ
    out, new_sig = attn(x, h, w, sig)
    assert new_sig is None
    rows = sorted(range(16), key=lambda n: sig[0, n].item())
    col_major = [i * w + j for j in range(w) for i in range(h)]
    cols = sorted(col_major, key=lambda n: sig[0, n].item())
    q = _lin(x[0], attn.q)
    heads = []
    for head, (order, kv) in enumerate(((rows, attn.kv1), (cols, attn.kv2))):
        seq = _merged(x[0], order, attn.mergers, [8, 8])  # 8 -> 2 and 8 -> 4 tokens
        k, v = _lin(seq, kv).chunk(2, -1)
        qh = q[:, 4 * head : 4 * head + 4]
        heads.append(torch.softmax(qh @ k.T * 0.5, -1) @ v)  # each half has one head
    lepe = F.conv2d(
        _lin(x, attn.lepe_linear).transpose(1, 2).reshape(1, 8, h, w),
        attn.lepe_conv.weight,
        attn.lepe_conv.bias,
        padding=1,
        groups=8,
    )
    want = _lin(torch.cat(heads, -1) + lepe.flatten(2).transpose(1, 2)[0], attn.proj)
    torch.testing.assert_close(out[0], want, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="significance"):
        attn(x, h, w, None)


def test_each_guided_block_gets_the_previous_blocks_significance():
    model = create_model("sgformer_pico").eval()
    stage = model.stages[0]
    kinds = [blk.attn.kind for blk in stage.blocks]
    assert kinds == ["hybrid", "guided"]
    assert [blk.attn.kind for blk in model.stages[3].blocks] == ["full"]
    seen = {}
    stage.blocks[0].attn.register_forward_hook(lambda _m, _i, out: seen.__setitem__("made", out[1]))
    stage.blocks[1].attn.register_forward_pre_hook(
        lambda _m, args: seen.__setitem__("used", args[3])
    )
    model(torch.randn(1, 3, 32, 32))
    assert seen["made"].shape == (1, 64)
    assert seen["used"] is seen["made"]


@pytest.mark.parametrize(
    "name, depths",
    [("sgformer_s", (2, 4, 16, 1)), ("sgformer_m", (2, 6, 28, 2)), ("sgformer_b", (4, 6, 24, 2))],
)
def test_canonical_counts(name, depths):
    with torch.device("meta"):
        model = create_model(name)
    assert [len(s.blocks) for s in model.stages] == list(depths)
    assert [m.in_features for m in model.stages[0].blocks[1].attn.mergers] == [196, 56, 28]
    assert [m.in_features for m in model.stages[2].blocks[1].attn.mergers] == [2, 1]
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(params / get_model_card(name).params_m - 1) < 0.005


def test_input_size_and_options_fail_clearly():
    model = create_model("sgformer_pico").eval()
    with pytest.raises(ValueError, match="rebuild with img_size=64"):
        model(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="merge_groups"):
        create_model("sgformer_pico", merge_groups=((16, 4, 3), (4, 2, 1), (2, 1), ()))
    with pytest.raises(ValueError, match="divisible by sr_ratio"):
        create_model("sgformer_pico", sr_ratios=(3, 2, 2, 1))
