"""Selfie: patch order, masked/visible split, the attention pooling queries and the
classification among distractors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from archbench.data import load_dataset
from archbench.models import create_model
from archbench.ssl.selfie import AttentionPooling, patch_grid, selfie_logits, split_masked
from archbench.train import create_task, fit, load_recipe


def test_patch_grid_is_row_major():
    img = torch.arange(16.0).view(1, 1, 4, 4)
    p = patch_grid(img, 2)
    assert p.shape == (1, 4, 1, 2, 2)
    assert p[0, 0, 0].tolist() == [[0, 1], [4, 5]]
    assert p[0, 1, 0].tolist() == [[2, 3], [6, 7]]
    assert p[0, 2, 0].tolist() == [[8, 9], [12, 13]]
    assert p[0, 3, 0].tolist() == [[10, 11], [14, 15]]
    with pytest.raises(ValueError, match="tile"):
        patch_grid(torch.zeros(1, 1, 5, 5), 2)


def test_split_masked_partitions_positions():
    m, v = split_masked(5, 16, 4, torch.Generator().manual_seed(0))
    assert m.shape == (5, 4) and v.shape == (5, 12)
    for i in range(5):
        assert sorted(m[i].tolist() + v[i].tolist()) == list(range(16))


def test_logits_are_query_candidate_dot_products():
    q = torch.randn(2, 3, 5)
    c = torch.randn(2, 3, 5)
    logits = selfie_logits(q, c)
    for b in range(2):
        for i in range(3):
            for j in range(3):
                assert float(logits[b, i, j]) == pytest.approx(float(q[b, i] @ c[b, j]), rel=1e-5)
    # the loss picks the true patch (j = i) among the image's other masked patches
    perfect = selfie_logits(c * 10, c / c.norm(dim=-1, keepdim=True))
    target = torch.arange(3).expand(2, -1)
    assert F.cross_entropy(perfect.reshape(-1, 3), target.reshape(-1)) < F.cross_entropy(
        perfect.roll(1, dims=2).reshape(-1, 3), target.reshape(-1)
    )


def test_queries_differ_only_by_the_target_position_embedding():
    torch.manual_seed(0)
    pool = AttentionPooling(dim=8, positions=9, depth=1, heads=2).eval()
    visible = torch.randn(2, 5, 8)
    visible_pos = torch.tensor([[0, 1, 2, 3, 4], [4, 5, 6, 7, 8]])
    query_pos = torch.tensor([[5, 6, 7, 8], [0, 1, 2, 3]])
    q = pool(visible, visible_pos, query_pos)
    pos = pool.pos[0]
    for b in range(2):
        u = q[b, 0] - pos[query_pos[b, 0]]
        for i in range(4):
            assert torch.allclose(q[b, i] - pos[query_pos[b, i]], u, atol=1e-6)
    # the summary depends on what is visible, and on where it is
    assert not torch.allclose(pool(visible * 2, visible_pos, query_pos), q)
    assert not torch.allclose(pool(visible, visible_pos.flip(1), query_pos), q)


def test_bad_arguments():
    with pytest.raises(ValueError, match="masked"):
        create_task("selfie", {"grid": 2, "masked": 4})
    with pytest.raises(ValueError, match="masked"):
        create_task("selfie", {"masked": 1})


def test_fit_runs(tmp_path):
    data = load_dataset("shapes:n_train=32,n_val=16,n_test=16,img_size=16")
    model = create_model("resnet_pico", num_classes=data.num_classes, img_size=16)
    recipe = load_recipe("cpu-fast").replace(
        epochs=1, batch_size=16, warmup_epochs=0, task="selfie", task_args={"depth": 1}
    )
    res = fit(model, data, recipe, tmp_path, progress=False)
    assert res.status == "completed"
    assert 0.0 <= res.history[-1]["val_acc"] <= 1.0
