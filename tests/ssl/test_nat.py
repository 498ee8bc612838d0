"""Noise As Targets: Hungarian re-assignment against brute force, the loss by hand."""

from __future__ import annotations

import itertools
import types

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from archbench.data import load_dataset
from archbench.models import create_model
from archbench.ssl.nat import NoiseAsTargets, hungarian_reassign, sphere_targets
from archbench.train import Batch, create_task, fit, load_recipe


def test_hungarian_matches_brute_force_on_4_points():
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        feats = F.normalize(torch.randn(4, 3, generator=g), dim=1)
        targets = F.normalize(torch.randn(4, 3, generator=g), dim=1)
        best = max(
            itertools.permutations(range(4)),
            key=lambda p: sum(float(feats[i] @ targets[p[i]]) for i in range(4)),
        )
        perm = hungarian_reassign(feats, targets)
        assert perm.tolist() == list(best)
        # on unit vectors the same permutation minimizes the summed squared distance
        dist = min(
            sum(float((feats[i] - targets[p[i]]).pow(2).sum()) for i in range(4))
            for p in itertools.permutations(range(4))
        )
        assert float((feats - targets[perm]).pow(2).sum()) == pytest.approx(dist, abs=1e-5)


def test_sphere_targets_are_unit_vectors_and_shapes_are_checked():
    t = sphere_targets(50, 8, torch.Generator().manual_seed(0))
    assert t.shape == (50, 8)
    assert torch.allclose(t.norm(dim=1), torch.ones(50), atol=1e-6)
    with pytest.raises(ValueError, match="same"):
        hungarian_reassign(torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="dim"):
        create_task("nat", {"dim": 0})


def _setup(reassign_every: int = 3):
    data = load_dataset("shapes:n_train=16,n_val=8,n_test=8,img_size=16")
    model = create_model("resnet_pico", num_classes=data.num_classes, img_size=16)
    task = NoiseAsTargets(dim=6, reassign_every=reassign_every)
    task.setup(model, data, load_recipe("cpu-fast"))
    x = data.train.images[:8].float() / 255
    batch = Batch(views=[x], targets=None, labels=None, index=torch.arange(8), raw=None)
    return model, data, task, batch


def test_step_reassigns_within_the_batch_and_loss_is_squared_distance():
    model, data, task, batch = _setup()
    model.eval()  # fixed BatchNorm statistics: the embeddings below are the step's
    before = task.assignment.clone()
    state = types.SimpleNamespace(model=model, data=data, epoch=0, step=0)
    out = task.step(batch, state)
    held = task.assignment[:8]
    # the batch's images swapped targets among themselves only
    assert sorted(held.tolist()) == sorted(before[:8].tolist())
    assert torch.equal(task.assignment[8:], before[8:])
    with torch.no_grad():
        z = task.embed(model, batch.images)
    expected = sum(float((z[i] - task.targets[held[i]]).pow(2).sum()) for i in range(8)) / 8
    assert float(out["loss"].detach()) == pytest.approx(expected, rel=1e-5)
    # the new assignment is the optimal one among the held targets
    perm = hungarian_reassign(z, task.targets[before[:8]])
    assert torch.equal(held, before[:8][perm])


def test_no_reassignment_between_update_epochs():
    model, data, task, batch = _setup(reassign_every=3)
    before = task.assignment.clone()
    task.step(batch, types.SimpleNamespace(model=model, data=data, epoch=1, step=0))
    assert torch.equal(task.assignment, before)


def test_fit_runs_and_resumable_state_is_saved(tmp_path):
    data = load_dataset("shapes:n_train=32,n_val=16,n_test=16,img_size=16")
    model = create_model("resnet_pico", num_classes=data.num_classes, img_size=16)
    recipe = load_recipe("cpu-fast").replace(
        epochs=1, batch_size=16, warmup_epochs=0, task="nat", task_args={"dim": 8}
    )
    res = fit(model, data, recipe, tmp_path, progress=False)
    assert res.status == "completed"
    assert torch.isfinite(torch.tensor(res.history[-1]["val_loss"]))
    # the targets and the assignment (a permutation of the training images) are checkpointed
    saved = load_file(tmp_path / "checkpoints" / "last.safetensors")
    assignment = next(v for k, v in saved.items() if k.endswith("task/assignment"))
    targets = next(v for k, v in saved.items() if k.endswith("task/targets"))
    assert sorted(assignment.tolist()) == list(range(32))
    assert targets.shape == (32, 8)
