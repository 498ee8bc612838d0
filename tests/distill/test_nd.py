"""KD with the ND loss (task ``kd_nd``): the loss and class means by hand, training, resume."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from _checks import RECIPE, assert_resumes_bit_exact, make_student, validate_before_training

from archbench.data.base import ImageTensorDataset
from archbench.distill import load_teacher
from archbench.distill.nd import nd_loss
from archbench.train import create_task, fit


def test_nd_loss_by_hand():
    s = np.array([[3.0, 4.0, 0.0], [0.5, -1.0, 2.0], [1.0, 1.0, 1.0]])
    t = np.array([[1.0, 0.0, 0.0], [2.0, 2.0, 2.0], [0.0, 3.0, 4.0]])
    centres = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 1.0], [1.0, 2.0, 2.0]])
    labels = [0, 2, 1]
    # sample 0: |s| = 5 > |t| = 1, so 1 - cos(s, c_0) = 1 - 3/5
    # sample 1: |s| = sqrt(5.25) < |t| = sqrt(12): 1 - <s, c_2/3> / sqrt(12)
    # sample 2: |s| = sqrt(3) < |t| = 5: 1 - <s, c_1/sqrt(2)> / 5
    expected = np.mean([1 - 3 / 5, 1 - (0.5 - 2 + 4) / 3 / np.sqrt(12), 1 - (2 / np.sqrt(2)) / 5])
    got = nd_loss(torch.tensor(s), torch.tensor(t), torch.tensor(centres), torch.tensor(labels))
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_class_means_and_kd_warmup(teacher_run, data):
    task = create_task("kd_nd", {"teacher": str(teacher_run), "kd_warmup_epochs": 4})
    task.setup(make_student("vit_pico"), data, RECIPE)
    teacher, _ = load_teacher(teacher_run)
    mean, std = np.array(data.mean).reshape(1, -1, 1, 1), np.array(data.std).reshape(1, -1, 1, 1)
    x = torch.tensor((data.train.images.numpy() / 255.0 - mean) / std, dtype=torch.float32)
    with torch.no_grad():
        emb = teacher.forward_head(teacher.forward_features(x), pre_logits=True).numpy()
    labels = data.train.labels.numpy()
    expected = np.stack([emb[labels == c].mean(0) for c in range(4)])
    np.testing.assert_allclose(task.centres.numpy(), expected, rtol=1e-4, atol=1e-5)
    assert "adapter" not in task.trainable  # vit_pico and resnet_pico are both 128 wide
    assert [task.kd_ramp(e) for e in (0, 1, 4, 9)] == [0.0, 0.25, 1.0, 1.0]
    assert set(task.state_dict()) == {"centres"}


@pytest.mark.parametrize(
    "teacher, student, adapter",
    [("teacher_run", "vit_pico", False), ("vit_teacher_run", "regnet_pico", True)],
)
def test_training_lowers_the_nd_loss_and_resumes_bit_exact(
    request, tmp_path, data, teacher, student, adapter
):
    args = {"teacher": str(request.getfixturevalue(teacher)), "kd_warmup_epochs": 1}
    recipe = RECIPE.replace(task="kd_nd", task_args=args, checkpoint_every_steps=1)
    model = make_student(student)
    task, before = validate_before_training("kd_nd", args, model, data, recipe)
    assert ("adapter" in task.trainable) is adapter  # regnet_pico is 64 wide, the ViT 128
    res = fit(make_student(student), data, recipe, tmp_path / "full", progress=False)
    assert res.status == "completed"
    assert res.history[-1]["val_nd"] < before["nd"]
    # and lower than the same run without the ND term
    plain = recipe.replace(task_args={**args, "nd_weight": 0.0})
    without = fit(make_student(student), data, plain, tmp_path / "no_nd", progress=False)
    assert res.history[-1]["val_nd"] < without.history[-1]["val_nd"]

    # stopped inside the second epoch
    a, _ = assert_resumes_bit_exact(
        lambda: make_student(student),
        data,
        recipe,
        tmp_path / "full",
        tmp_path / "cut",
        stop_step=5,
    )
    assert "extra/task/centres" in a


def test_a_class_missing_from_training_fails_before_training(tmp_path, data, teacher_run):
    keep = data.train.labels != 3
    short = dataclasses.replace(
        data, train=ImageTensorDataset(data.train.images[keep], data.train.labels[keep])
    )
    recipe = RECIPE.replace(task="kd_nd", task_args={"teacher": str(teacher_run)})
    with pytest.raises(ValueError, match=r"no images of class\(es\) \[3\]"):
        fit(make_student("resnet_pico"), short, recipe, tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad" / "checkpoints" / "last.safetensors").exists()
    with pytest.raises(ValueError, match="nd_weight must be >= 0"):
        create_task("kd_nd", {"teacher": str(teacher_run), "nd_weight": -1.0})
