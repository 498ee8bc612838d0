"""S-KAN's selection phase: one activation per unit, the rest pruned."""

import pytest
import torch

from archbench.layers.kan import KANConv2d, KANLinear, select_activations
from archbench.layers.kan_basis import ChebyshevBasis, RBFBasis

CANDIDATES = ("chebyshev", ("rbf", {"n_basis": 4}))


def _layer(cls=KANLinear, **kw):
    torch.manual_seed(0)
    if cls is KANLinear:
        layer = KANLinear(3, 2, basis="selectable", candidates=CANDIDATES, **kw)
    else:
        layer = KANConv2d(4, 6, 3, padding=1, groups=2, basis="selectable", candidates=CANDIDATES)
    with torch.no_grad():
        layer.basis.logits.copy_(torch.randn_like(layer.basis.logits) * 2)
    return layer


def test_selection_keeps_the_strongest_candidate_and_its_contribution():
    layer = _layer()
    x = torch.randn(5, 3)
    w = layer.basis.weights().detach()
    sel = w.argmax(-1)
    feats = {0: ChebyshevBasis(3)(x), 1: RBFBasis(3, n_basis=4)(x)}  # (5, 3, K_j)
    blocks = {0: slice(0, 4), 1: slice(4, 8)}
    # written out: base branch plus, for every input, only its kept candidate's term
    expected = torch.nn.functional.silu(x) @ layer.base_weight.T
    for i in range(3):
        j = int(sel[i])
        coef = layer.weight[:, i, blocks[j]].detach()  # (out, K_j)
        expected = expected + w[i, j] * feats[j][:, i] @ coef.T
    assert select_activations(layer) == 1
    assert layer.basis.is_selected and layer.basis.selected().tolist() == sel.tolist()
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    # the pruned candidates' coefficients are zero and stay out of training
    for i in range(3):
        other = blocks[1 - int(sel[i])]
        assert layer.weight[:, i, other].abs().max() == 0
    layer(x).sum().backward()
    for i in range(3):
        assert layer.weight.grad[:, i, blocks[1 - int(sel[i])]].abs().max() == 0
    assert not layer.basis.logits.requires_grad
    assert select_activations(layer) == 0  # idempotent


def test_selection_of_a_grouped_kan_convolution_keeps_the_kept_terms():
    layer = _layer(KANConv2d)
    x = torch.randn(2, 4, 5, 5)
    sel = layer.basis.weights().argmax(-1)
    # reference: the search-phase layer with the pruned candidates' coefficients zeroed
    with torch.no_grad():
        ref_layer = _layer(KANConv2d)
        for i in range(4):
            other = slice(4, 8) if int(sel[i]) == 0 else slice(0, 4)
            g, li = divmod(i, 2)
            ref_layer.weight[g * 3 : (g + 1) * 3, li, other] = 0
        expected = ref_layer(x)
    select_activations(layer)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_selection_survives_a_state_dict_round_trip():
    layer = _layer()
    select_activations(layer)
    fresh = KANLinear(3, 2, basis="selectable", candidates=CANDIDATES)
    fresh.load_state_dict(layer.state_dict())
    assert fresh.basis.is_selected
    x = torch.randn(4, 3)
    torch.testing.assert_close(fresh(x), layer(x))


def test_unselected_candidates_are_not_evaluated():
    layer = _layer()
    with torch.no_grad():
        layer.basis.logits.zero_()
        layer.basis.logits[:, 0] = 5.0  # every input prefers Chebyshev
    select_activations(layer)
    calls = []
    layer.basis.candidates[1].register_forward_hook(lambda *a: calls.append(1))
    layer(torch.randn(2, 3))
    assert not calls


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_selectable_rejects_bad_temperature(bad):
    with pytest.raises(ValueError, match="temperature"):
        KANLinear(3, 2, basis="selectable", candidates=CANDIDATES, temperature=bad)
