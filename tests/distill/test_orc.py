"""ORC (task ``orc``): roles, group teaching and error images by hand, a heterogeneous
group trained with a teacher, resume, and bad arguments."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from _checks import (
    RECIPE,
    assert_resumes_bit_exact,
    make_student,
    np_softmax,
    validate_before_training,
)

from archbench.train import Batch, create_task, fit
from archbench.train.callbacks import TrainState


def _student(name="resnet_pico"):
    return make_student(name)


class _Logits(nn.Module):
    """A group member whose output is a fixed, trainable logits table."""

    def __init__(self, z):
        super().__init__()
        self.z = nn.Parameter(torch.tensor(z, dtype=torch.float32))

    def forward(self, images):
        return self.z


class _Teachers(nn.Module):
    def __init__(self, z):
        super().__init__()
        self.z = torch.tensor(z, dtype=torch.float32)

    def forward(self, images):
        return [self.z.clone()]


def test_roles_group_teaching_and_error_images_by_hand():
    z = [  # model, peer 1, peer 2: peer 2 fits the labels best and is promoted
        np.array([[1.0, 0.0, -1.0, 0.5], [0.2, 0.1, 0.0, 0.3], [0.0, 1.0, 0.5, 0.0]]),
        np.array([[0.3, 0.2, 0.1, 0.0], [0.0, 0.5, 0.4, 0.1], [0.2, 0.1, 0.9, 0.0]]),
        np.array([[2.0, -1.0, 0.0, 0.0], [0.0, 2.0, 0.0, -1.0], [0.0, 0.0, 2.5, 0.0]]),
    ]
    teacher = np.array([[1.5, 0.0, 0.2, 0.1], [0.1, 1.2, 0.0, 0.0], [0.0, 0.3, 1.0, 0.2]])
    labels = np.array([0, 1, 2])
    y = np.eye(4)[labels]
    temp, alpha, intensive = 2.0, 0.4, 0.7

    def ce(logits, rows=slice(None)):
        return -(y[rows] * np.log(np_softmax(logits[rows]))).sum(1).mean()

    def kd(probs, logits):  # T^2 KL(probs || softmax(logits / T))
        q = np_softmax(logits / temp)
        return temp**2 * (probs * (np.log(probs) - np.log(q))).sum(1).mean()

    ces = [ce(m) for m in z]
    assert int(np.argmin(ces)) == 2
    p_group = (np_softmax(teacher / temp) + np_softmax(z[2] / temp)) / 2
    p_private = np_softmax(teacher / temp)
    # the students (model, peer 1) err on samples 1 and 2 (the model does)
    wrong = np.array([False, True, True])
    assert ((z[0].argmax(1) != labels) | (z[1].argmax(1) != labels)).tolist() == wrong.tolist()
    students = sum((1 - alpha) * ces[m] + alpha * kd(p_group, z[m]) for m in (0, 1))
    promoted = (1 - alpha) * ces[2] + alpha * kd(p_private, z[2]) + intensive * ce(z[2], wrong)
    args = {
        "peers": 2,
        "teachers": ["t"],
        "temperature": temp,
        "alpha": alpha,
        "intensive": intensive,
    }
    task = create_task("orc", args)
    task.trainable["peers"] = nn.ModuleList([_Logits(z[1]), _Logits(z[2])])
    task.frozen["teachers"] = _Teachers(teacher)
    model = _Logits(z[0])
    batch = Batch(
        [torch.zeros(3, 3, 4, 4)],
        torch.tensor(y, dtype=torch.float32),
        torch.tensor(labels),
        torch.arange(3),
    )
    state = TrainState(model=model, optimizer=None, recipe=RECIPE, data=None, out_dir=".")
    out = task.step(batch, state)
    assert float(out["loss"].detach()) == pytest.approx(students + promoted, rel=1e-5)
    assert float(out["kd"]) == pytest.approx(kd(p_group, z[0]), rel=1e-5)
    assert out["promoted"] == 0.0 and float(out["errors"]) == pytest.approx(2 / 3)
    # each member's gradient comes from its own term alone (the group's outputs are detached)
    out["loss"].backward()
    own = torch.tensor(z[2], dtype=torch.float32, requires_grad=True)
    t = torch.tensor(teacher, dtype=torch.float32)
    yt = torch.tensor(y, dtype=torch.float32)
    log_q = torch.log_softmax(own / temp, 1)
    p_t = torch.softmax(t / temp, 1)
    term = (1 - alpha) * -(yt * torch.log_softmax(own, 1)).sum(1).mean()
    term = term + alpha * temp**2 * (p_t * (p_t.log() - log_q)).sum(1).mean()
    term = term + intensive * -(yt[1:] * torch.log_softmax(own[1:], 1)).sum(1).mean()
    (grad,) = torch.autograd.grad(term, own)
    torch.testing.assert_close(task.trainable["peers"][1].z.grad, grad)
    # roles: the lowest scores teach, ties go to the lower index
    assert task.roles([0.3, 0.1, 0.2]) == ([1], [0, 2])
    two = create_task("orc", {"peers": 2, "promote": 2})
    assert two.roles([0.2, 0.2, 0.1]) == ([0, 2], [1])


def test_training_lowers_the_loss_and_resumes_bit_exact(tmp_path, data, teacher_run):
    # a ViT model and a CNN peer teach each other, with a CNN teacher in the teacher group
    args = {"peers": ["resnet_pico"], "teachers": [str(teacher_run)]}
    recipe = RECIPE.replace(task="orc", task_args=args, checkpoint_every_steps=1)
    _, before = validate_before_training("orc", args, _student("vit_pico"), data)
    res = fit(_student("vit_pico"), data, recipe, tmp_path / "full", progress=False)
    assert res.status == "completed"
    assert res.history[-1]["val_kd"] < before["kd"]
    promoted = [r["train_promoted"] for r in res.history]
    assert all(0 <= p <= 1 for p in promoted) and "val_peer1_top1" in res.history[-1]

    # stopped inside the second epoch
    a, _ = assert_resumes_bit_exact(
        lambda: _student("vit_pico"), data, recipe, tmp_path / "full", tmp_path / "cut", stop_step=5
    )
    assert any(k.startswith("extra/task/trainable.peers.0.") for k in a)


def test_copies_differ_and_bad_arguments_fail_before_training(tmp_path, data):
    task = create_task("orc", {"peers": 2})
    model = _student()
    task.setup(model, data, RECIPE)
    peers = task.trainable["peers"]
    assert [type(p) for p in peers] == [type(model)] * 2
    first = [p.state_dict()["head.weight"] for p in (model, *peers)]
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[1], first[2])
    # rank_on="val": a validation mini-batch drawn from (seed, step), members left in train mode
    ranked = create_task("orc", {"peers": 1, "rank_on": "val", "rank_batch": 8})
    ranked.setup(model, data, RECIPE)
    members = [model.train(), ranked.trainable["peers"][0].train()]
    dummy = [torch.zeros(())] * 2

    def scores(step):
        state = TrainState(
            model=model, optimizer=None, recipe=RECIPE, data=data, out_dir=".", step=step
        )
        return ranked.rank_scores(members, dummy, state)

    assert scores(3) == scores(3) and scores(3) != scores(4)
    assert all(m.training for m in members) and all(0 < s < 5 for s in scores(3))
    with pytest.raises(ValueError, match="promote must be an int from 1 to 2"):
        create_task("orc", {"peers": 2, "promote": 3})
    with pytest.raises(ValueError, match="refine_teachers needs teachers"):
        create_task("orc", {"refine_teachers": True})
    recipe = RECIPE.replace(task="orc", task_args={"peers": ["resnet_pico", "vit_picoo"]})
    with pytest.raises(
        ValueError, match="unknown model 'vit_picoo'; closest registered names: vit_pico"
    ):
        fit(_student(), data, recipe, tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad" / "checkpoints" / "last.safetensors").exists()
