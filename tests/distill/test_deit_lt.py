"""DeiT-LT: out-of-distribution views for the teacher and deferred class-balanced
re-weighting of the distillation head, on a long-tailed split of SPEC."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from _checks import (
    RECIPE,
    SPEC,
    assert_resumes_bit_exact,
    make_student,
    validate_before_training,
)

from archbench.data import load_dataset
from archbench.distill.deit_lt import class_balanced_weights, reweighted_hard_distillation
from archbench.train import create_task, fit
from archbench.train.callbacks import TrainState
from archbench.train.tasks import Batch

COUNTS = [16, 10, 5, 2]  # an imbalance factor of 8


def _long_tailed(data, counts):
    labels = data.train.labels
    keep = torch.cat([torch.nonzero(labels == c).flatten()[:n] for c, n in enumerate(counts)])
    return dataclasses.replace(data, train=data.train.subset(torch.sort(keep).values))


@pytest.fixture(scope="module")
def data():
    lt = _long_tailed(load_dataset(SPEC, seed=0), COUNTS)
    assert lt.train.class_counts(4) == COUNTS
    return lt


def _student(name="deit_pico_distilled"):
    return make_student(name)


def test_class_balanced_weights_and_reweighted_loss_by_hand():
    beta = 0.99
    n = np.array(COUNTS, dtype=float)
    w = (1 - beta) / (1 - beta**n)
    w = w / w.sum() * 4
    got = class_balanced_weights(COUNTS, beta)
    np.testing.assert_allclose(got.numpy(), w, rtol=1e-6)
    assert got[3] > got[2] > got[1] > got[0]  # the rarest class weighs most
    np.testing.assert_allclose(class_balanced_weights(COUNTS, 0.0).numpy(), np.ones(4))

    dist = np.array([[2.0, 0.0, -1.0, 0.5], [0.0, 1.0, 0.0, 0.0], [0.3, 0.2, 0.1, 2.0]])
    teacher = np.array([[0.1, 0.2, 3.0, 0.0], [5.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    yt = teacher.argmax(1)  # classes 2, 0, 3
    logp = dist - np.log(np.exp(dist).sum(1, keepdims=True))
    nll = -logp[np.arange(3), yt]
    expected = (w[yt] * nll).sum() / w[yt].sum()
    args = (torch.tensor(dist), torch.tensor(teacher))
    assert float(reweighted_hard_distillation(*args, got)) == pytest.approx(expected, rel=1e-5)
    assert float(reweighted_hard_distillation(*args, None)) == pytest.approx(nll.mean(), rel=1e-5)


def _batch(data, n=8):
    x = data.train.images[:n]
    y = data.train.labels[:n]
    mean = torch.tensor(data.mean).view(1, 3, 1, 1)
    std = torch.tensor(data.std).view(1, 3, 1, 1)
    views = [(x.float() / 255 - mean) / std]
    return Batch(views=views, targets=torch.eye(4)[y], labels=y, index=torch.arange(n), raw=x)


def test_the_teacher_labels_strong_views_and_drw_switches_on(data, teacher_run):
    task = create_task("deit_lt", {"teacher": str(teacher_run), "drw_start": 0.5})
    task.setup(_student(), data, RECIPE)
    assert task.drw_epoch == 1
    batch = _batch(data)
    early = TrainState(model=None, optimizer=None, recipe=RECIPE, data=data, out_dir=".", step=3)
    view, targets = task.ood_view(batch, early)
    again, _ = task.ood_view(batch, early)
    assert torch.equal(view, again)  # keyed by the step: a resumed run draws the same view
    assert not torch.allclose(view, batch.images)  # the teacher does not see the recipe's batch
    assert (targets.max(1).values < 0.9).any()  # mixed targets before DRW (smoothing 0.1 -> 0.925)
    late = dataclasses.replace(early, epoch=1, step=9)
    _, targets = task.ood_view(batch, late)
    assert torch.allclose(targets.max(1).values, torch.full((8,), 0.925))  # no mixing in DRW
    assert task.distill_weights(0) is None and task.distill_weights(1) is task.weights

    # a training step: student and teacher both get the strong view, not the recipe's batch
    seen = []
    labeller = task.teacher_on
    task.teacher_on = lambda images: seen.append(images) or labeller(images)
    student = _student().train()
    out = task.step(batch, dataclasses.replace(early, model=student))
    assert torch.equal(seen[0], view) and torch.isfinite(out["loss"])


def test_training_lowers_the_distillation_loss_and_resumes_bit_exact(tmp_path, data, teacher_run):
    args = {"teacher": str(teacher_run), "drw_start": 0.5}
    recipe = RECIPE.replace(task="deit_lt", task_args=args, checkpoint_every_steps=1)
    model = _student()
    # the re-weighted loss of the last epoch, measured before training
    _, before = validate_before_training("deit_lt", args, model, data, epoch=1)
    res = fit(model, data, recipe, tmp_path / "full", progress=False)
    assert res.status == "completed" and res.steps == 4
    assert [h["train_drw"] for h in res.history] == [0.0, 1.0]
    assert res.history[-1]["val_distill"] < before["distill"]

    # stopped inside the second (re-weighted) epoch
    assert_resumes_bit_exact(
        _student, data, recipe, tmp_path / "full", tmp_path / "cut", stop_step=3
    )


def test_bad_inputs_fail_before_training(tmp_path, data, teacher_run):
    args = {"teacher": str(teacher_run)}
    recipe = RECIPE.replace(task="deit_lt", task_args=args)
    empty = _long_tailed(data, [16, 10, 5, 0])
    with pytest.raises(ValueError, match=r"class\(es\) \[3\] have no training samples"):
        fit(_student(), empty, recipe, tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="needs a student with a distillation head"):
        fit(_student("vit_pico"), data, recipe, tmp_path / "b", progress=False)
    with pytest.raises(ValueError, match=r"has no argument\(s\) cache"):
        create_task("deit_lt", {**args, "cache": str(tmp_path)})
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\)"):
        create_task("deit_lt", {**args, "beta": 1.0})
    assert not (tmp_path / "a" / "checkpoints" / "last.safetensors").exists()
