"""OPTIN: trajectory importance, MAC-constrained selection and physical head/neuron removal."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from _prune_helpers import tiny_context, tiny_data

from archbench import create_model
from archbench.bench.measure import count_flops
from archbench.compress import create_compressor
from archbench.compress.optin import (
    _rescale_kl,
    apply_unit_masks,
    manifold_distortion,
    optin_importance,
    optin_select,
    prune_units,
)


def _model(depth: int = 3):
    torch.manual_seed(0)
    return create_model("vit_pico", num_classes=4, img_size=16, depth=depth).eval()


def test_manifold_distortion_by_numpy():
    g = torch.Generator().manual_seed(0)
    t, s = torch.randn(1, 2, 3, 4, generator=g), torch.randn(1, 2, 3, 4, generator=g)
    tn = t.numpy().reshape(6, 4)
    sn = s.numpy().reshape(6, 4)
    tn = tn / np.linalg.norm(tn, axis=1, keepdims=True)
    sn = sn / np.linalg.norm(sn, axis=1, keepdims=True)
    want = ((tn @ tn.T - sn @ sn.T) ** 2).sum()
    assert manifold_distortion(t, s, None).item() == pytest.approx(want, rel=1e-5)
    idx = torch.tensor([0, 2, 5])
    want_s = ((tn[[0, 2, 5]] @ tn[[0, 2, 5]].T - sn[[0, 2, 5]] @ sn[[0, 2, 5]].T) ** 2).sum()
    assert manifold_distortion(t, s, idx).item() == pytest.approx(want_s, rel=1e-5)


def test_head_importance_is_the_trajectory_written_out():
    model = _model(3)
    x = torch.randn(4, 3, 16, 16)
    heads, neurons = optin_importance(model, x, neuron_group=64)
    assert [len(h) for h in heads] == [4, 4, 4] and [len(n) for n in neurons] == [256] * 3
    # mask head 1 of block 0 by zeroing its columns of proj, run the whole model
    masked = copy.deepcopy(model)
    dh = masked.blocks[0].attn.head_dim
    with torch.no_grad():
        masked.blocks[0].attn.proj.weight[:, dh : 2 * dh] = 0

    def outs(m):
        feats = []
        hs = [b.register_forward_hook(lambda mod, i, o: feats.append(o)) for b in m.blocks]
        with torch.no_grad():
            logits = m(x)
        for h in hs:
            h.remove()
        return logits, feats

    (lt, ft), (ls, fs) = outs(model), outs(masked)

    def md(a, b):
        a = torch.nn.functional.normalize(a, dim=-1).reshape(-1, a.shape[-1])
        b = torch.nn.functional.normalize(b, dim=-1).reshape(-1, b.shape[-1])
        return ((a @ a.T - b @ b.T) ** 2).sum()

    layer_term = md(ft[1], fs[1]) + md(ft[2], fs[2])  # the blocks after block 0 (68 < 768 tokens)
    pt, ps = torch.softmax(lt / 4, -1), torch.softmax(ls / 4, -1)  # noqa: F841
    lpt, lps = torch.log_softmax(lt, -1), torch.log_softmax(ls, -1)
    kl = 16 * (lpt.exp() * (lpt - lps)).sum()
    scale = 10 ** math.trunc(math.log10(layer_term) - math.log10(kl) - 1)
    assert heads[0][1].item() == pytest.approx(float(layer_term + scale * kl), rel=1e-3)


def test_selection_by_hand():
    heads = [torch.tensor([5.0, 1.0])]
    neurons = [torch.tensor([3.0, 2.0, 0.5])]
    # total MACs 2*4 + 3*1 = 11; budget 5.5: no head + 3 neurons = 5.5 importance,
    # best head + 1 neuron (4 + 1 MACs) = 8, two heads do not fit
    hk, nk = optin_select(heads, neurons, [4.0], [1.0], 0.5)
    assert hk[0].tolist() == [True, False] and nk[0].tolist() == [True, False, False]


def test_pruning_equals_masking_and_shrinks():
    model = _model(3)
    x = torch.randn(3, 3, 16, 16)
    hk = [
        torch.tensor([True, False, True, False]),
        torch.zeros(4, dtype=torch.bool),
        torch.ones(4, dtype=torch.bool),
    ]
    nk = [
        torch.rand(256) > 0.5,
        torch.ones(256, dtype=torch.bool),
        torch.zeros(256, dtype=torch.bool),
    ]
    ref = apply_unit_masks(model, hk, nk, x)
    pruned = prune_units(copy.deepcopy(model), hk, nk)
    assert torch.allclose(pruned(x), ref, atol=1e-5)
    assert not torch.allclose(model(x), ref, atol=1e-3)
    assert pruned.blocks[0].attn.num_heads == 2
    assert pruned.blocks[0].attn.qkv.out_features == 3 * 2 * 32
    n_params = sum(p.numel() for p in pruned.parameters())
    assert n_params < sum(p.numel() for p in model.parameters())
    # the FLOP counter runs through bias-only branches, and the MACs fall
    macs = count_flops(pruned, (16, 16))["macs"]
    assert macs < count_flops(model, (16, 16))["macs"]


def test_compressor_end_to_end():
    data = tiny_data()
    model = create_model("vit_pico", num_classes=4, img_size=16, depth=2)
    before = sum(p.numel() for p in model.parameters())
    comp = create_compressor(
        "optin", {"mac_constraint": 0.5, "calibration_images": 8, "neuron_group": 64}
    )
    res = comp(model, tiny_context(data))
    assert sum(p.numel() for p in res.model.parameters()) < before
    assert sum(res.info["heads_kept"]) < 8 or sum(res.info["neurons_kept"]) < 512
    assert res.model(torch.randn(2, 3, 16, 16)).shape == (2, 4)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.2])
def test_bad_mac_constraint(bad):
    with pytest.raises(ValueError, match="mac_constraint"):
        create_compressor("optin", {"mac_constraint": bad})(_model(), tiny_context(tiny_data()))


def test_refuses_token_pruned_blocks():
    from archbench.compress.token_prune import apply_evit

    model = apply_evit(_model(4), 0.5, [1])
    with pytest.raises(ValueError, match="original transformer blocks"):
        create_compressor("optin", {})(model, tiny_context(tiny_data()))


def test_kl_rescaling_by_hand():
    md = torch.tensor([1000.0, 5.0, 3.0])
    kl = torch.tensor([0.5, 2.0, 0.0])
    out = _rescale_kl(md, kl, 10.0)
    # log10(1000) - log10(0.5) - 1 = 2.30 -> x100; log10(5) - log10(2) - 1 = -0.60 -> x1
    assert out[:2].tolist() == pytest.approx([50.0, 2.0])
    assert out[2].item() == 0.0  # no KL: scaled by the mean factor, still zero
