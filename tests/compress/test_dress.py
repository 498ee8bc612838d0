"""DRESS: row-based nested masks, run-time level selection, the joint loss, end to end."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from _prune_helpers import tiny_context, tiny_data

from archbench import create_model
from archbench.compress import create_compressor
from archbench.compress.dress import (
    DressTask,
    add_dress_masks,
    row_keep_mask,
    set_dress_level,
)


def test_row_mask_by_hand():
    w = torch.tensor([[0.1, -3.0, 0.5, 2.0], [4.0, 0.2, -0.3, 0.0]])
    assert row_keep_mask(w, 0.5).tolist() == [
        [False, True, False, True],
        [True, False, True, False],
    ]
    assert row_keep_mask(w, 0.75).tolist() == [
        [False, True, False, False],
        [True, False, False, False],
    ]


def _conv_weights(model):
    return [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]


def test_levels_are_nested_and_row_sparse():
    torch.manual_seed(0)
    model = add_dress_masks(create_model("resnet_pico", num_classes=4), [0.0, 0.5, 0.75, 0.9])
    supports = {}
    for s in (0.5, 0.75, 0.9):
        set_dress_level(model, s)
        supports[s] = [(w != 0).detach().clone() for w in _conv_weights(model)]
    for lo, hi in ((0.5, 0.75), (0.75, 0.9)):
        for a, b in zip(supports[lo], supports[hi]):
            assert not (b & ~a).any()  # the sparser mask is a subset
            assert b.sum() < a.sum()
    for w in supports[0.75]:
        rows = w.reshape(w.shape[0], -1)
        n = rows.shape[1]
        assert (rows.sum(1) == max(1, n - int(0.75 * n))).all()  # the same budget in each row


def test_level_selected_at_run_time():
    torch.manual_seed(0)
    plain = create_model("resnet_pico", num_classes=4).eval()
    model = add_dress_masks(copy.deepcopy(plain), [0.0, 0.5, 0.9])
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(set_dress_level(model, 0.0)(x), plain(x))
    y5, y9 = set_dress_level(model, 0.5)(x), set_dress_level(model, 0.9)(x)
    assert not torch.allclose(y5, y9) and not torch.allclose(y5, plain(x))
    with pytest.raises(ValueError, match="levels"):
        set_dress_level(model, 0.7)


def test_joint_loss_written_out():
    torch.manual_seed(0)
    model = create_model("resnet_pico", num_classes=4)
    task = DressTask([0.5, 0.9], loss_weights=[1.0, 2.0, 3.0])
    task.setup(model, None, None)

    class B:
        images = torch.randn(4, 3, 16, 16)
        labels = torch.tensor([0, 1, 2, 3])
        targets = F.one_hot(labels, 4).float()

    class S:
        pass

    S.model = model
    out = task.step(B, S)
    want = 0.0
    for s, w in ((0.0, 1.0), (0.5, 2.0), (0.9, 3.0)):
        set_dress_level(model, s)
        want += w * F.cross_entropy(model(B.images), B.labels)
    assert torch.allclose(out["loss"], want / 6.0, atol=1e-5)


def test_bad_levels():
    with pytest.raises(ValueError, match="sparsity"):
        DressTask([0.5, 1.0])
    with pytest.raises(ValueError, match="loss_weights"):
        DressTask([0.5], loss_weights=[1.0])


def test_compressor_end_to_end(tmp_path):
    data = tiny_data()
    torch.manual_seed(0)
    model = create_model("resnet_pico", num_classes=4)
    res = create_compressor("dress", {"sparsities": "0.5,0.8", "epochs": 1})(
        model, tiny_context(data, tmp_path)
    )
    assert res.info["selected"] == 0.8
    assert set(res.info["val_top1_by_level"]) == {"0.0", "0.5", "0.8"}
    w = _conv_weights(res.model)[1]
    assert (w == 0).float().mean() >= 0.75


@pytest.mark.parametrize(
    "args", [{"sparsities": "0.5,1.0"}, {"sparsities": "a,b"}, {"select": 0.3}]
)
def test_compressor_refuses_bad_arguments_before_work(args):
    with pytest.raises(ValueError):
        create_compressor("dress", args)


def test_masks_are_cached_until_the_weights_change(monkeypatch):
    import archbench.compress.dress as dress_mod

    torch.manual_seed(0)
    model = add_dress_masks(create_model("resnet_pico", num_classes=4).eval(), [0.0, 0.5])
    set_dress_level(model, 0.5)
    x = torch.randn(1, 3, 16, 16)
    calls = []
    real = dress_mod.row_keep_mask
    monkeypatch.setattr(dress_mod, "row_keep_mask", lambda w, s: calls.append(s) or real(w, s))
    with torch.no_grad():
        y1 = model(x)
        n_first = len(calls)
        assert torch.equal(model(x), y1) and len(calls) == n_first  # served from the cache
        conv = model.layer1[0].conv1
        conv.parametrizations.weight.original.mul_(-1.0)  # an in-place update
        model(x)
    assert len(calls) == n_first + 1  # only the changed weight is masked again
