"""Knowledge concentration (task ``knowledge_concentration``): the loss and self-paced
weights by hand, specialists, connected layers, training, resume and bad arguments."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from _checks import (
    RECIPE,
    FixedOutputs,
    assert_resumes_bit_exact,
    make_student,
    np_softmax,
    validate_before_training,
)

from archbench.data import ImageTensorDataset
from archbench.distill.concentration import ConnectedHead, add_connected_layers
from archbench.models import create_model
from archbench.train import Batch, Recipe, create_task, fit
from archbench.train.callbacks import TrainState


def class_subset(data, classes):
    """``data`` restricted to ``classes``, relabelled 0 .. len(classes) - 1."""

    def split(ds):
        keep = torch.isin(ds.labels, torch.tensor(classes))
        labels = torch.tensor([classes.index(int(c)) for c in ds.labels[keep]])
        return ImageTensorDataset(ds.images[keep], labels)

    return dataclasses.replace(
        data,
        spec=f"{data.spec} (classes {classes})",
        train=split(data.train),
        val=split(data.val),
        test=split(data.test),
        num_classes=len(classes),
        class_names=[data.class_names[c] for c in classes],
    )


def train_specialist(data, classes, out, model="resnet_pico", epochs=2):
    """A run folder holding ``model`` trained on ``classes`` of ``data`` only."""
    sub = class_subset(data, classes)
    kwargs = {"num_classes": len(classes), "in_chans": sub.in_chans, "img_size": sub.img_size}
    torch.manual_seed(0)
    net = create_model(model, **kwargs)
    fit(net, sub, Recipe(epochs=epochs, batch_size=16, lr=5e-3, seed=0), out, progress=False)
    (out / "model.json").write_text(json.dumps({"model": model, "kwargs": kwargs}))
    return out


@pytest.fixture(scope="module")
def specialist_run(tmp_path_factory, data):
    """resnet_pico trained on classes 2 and 3 alone (two outputs)."""
    return train_specialist(data, [2, 3], tmp_path_factory.mktemp("specialist") / "run")


def _student(name="resnet_pico"):
    return make_student(name)


def test_loss_and_self_paced_weights_by_hand():
    s = np.array([[1.0, -0.5, 2.0, 0.0], [0.1, 0.2, -1.0, 0.7], [0.3, 0.9, 0.0, -0.4]])
    t_full = np.array([[0.5, 0.0, 3.0, -1.0], [2.0, -1.0, 0.0, 0.3], [1.0, 1.0, -2.0, 0.5]])
    t_spec = np.array([[0.2, 1.5], [-0.3, 0.4], [1.1, 0.0]])  # a specialist on classes 3, 1
    labels = np.array([0, 3, 1])
    targets = np.eye(4)[labels]
    temp, alpha, classes = 2.0, 0.3, [[0, 2], [3, 1]]

    def l_ik(teacher, cls):  # T^2 KL(softmax(t / T) || softmax(s[:, C] / T)) per sample
        p_t, p_s = np_softmax(teacher / temp), np_softmax(s[:, cls] / temp)
        return temp**2 * (p_t * (np.log(p_t) - np.log(p_s))).sum(1)

    losses = np.stack([l_ik(t_full[:, [0, 2]], [0, 2]), l_ik(t_spec, [3, 1])], 1)
    mask = np.array([[1, 0], [0, 1], [0, 1]], dtype=float)  # route by label
    ce = -(targets * np.log(np_softmax(s))).sum(1).mean()

    task = create_task(
        "knowledge_concentration",
        {"teachers": ["a", "b"], "classes": classes, "temperature": temp, "alpha": alpha},
    )
    task.subsets, task.full_teacher = classes, [True, False]
    task.frozen["teachers"] = FixedOutputs([torch.tensor(t_full), torch.tensor(t_spec)])
    logits = torch.tensor(s, requires_grad=True)
    batch = Batch(
        [torch.zeros(3, 3, 4, 4)], torch.tensor(targets), torch.tensor(labels), torch.arange(3)
    )

    class _Model:
        training = True

        def __call__(self, x):
            return logits

    out = task.step(
        batch, TrainState(model=_Model(), optimizer=None, recipe=RECIPE, data=None, out_dir=".")
    )
    # first step: lambda_k is the median of teacher k's losses on its own samples
    lam = [np.quantile(losses[mask[:, k] > 0, k], 0.5) for k in range(2)]
    assert task.spl_lambda.tolist() == pytest.approx(lam)
    v = mask * (losses <= np.array(lam))
    assert v.sum() == 2  # teacher 0's one sample, and the easier of teacher 1's two
    expected = (1 - alpha) * ce + alpha * (v * losses).sum() / 3
    assert float(out["loss"].detach()) == pytest.approx(expected, rel=1e-6)
    assert float(out["kd"]) == pytest.approx((mask * losses).sum() / 3, rel=1e-6)
    # the pace widens by 1.3 per epoch: teacher 1's harder sample joins after two epochs
    state = TrainState(model=_Model(), optimizer=None, recipe=RECIPE, data=None, out_dir=".")
    hard = losses[2, 1]
    assert 1.3 * lam[1] < hard <= 1.3**2 * lam[1]
    task.on_epoch_end(state, record := {})
    assert record["spl_lambda1"] == pytest.approx(1.3 * lam[1])
    assert float(task.step(batch, state)["spl_kept"]) == pytest.approx(2 / 3)
    task.on_epoch_end(state, record)
    assert float(task.step(batch, state)["spl_kept"]) == 1.0
    # route="all": every teacher on every sample
    every = create_task(
        "knowledge_concentration",
        {
            "teachers": ["a", "b"],
            "classes": classes,
            "temperature": temp,
            "alpha": alpha,
            "route": "all",
            "spl": False,
        },
    )
    every.subsets, every.full_teacher, every.frozen["teachers"] = (
        classes,
        [True, False],
        task.frozen["teachers"],
    )
    out = every.step(
        batch, TrainState(model=_Model(), optimizer=None, recipe=RECIPE, data=None, out_dir=".")
    )
    assert float(out["loss"].detach()) == pytest.approx(
        (1 - alpha) * ce + alpha * losses.sum() / 3, rel=1e-6
    )


def test_connected_layers_feed_only_their_classes():
    torch.manual_seed(0)
    base = nn.Linear(5, 4)
    head = ConnectedHead(base, [[0, 2], [3]], hidden=3)
    x = torch.randn(2, 5)
    assert torch.equal(head(x), base(x))  # zero-initialised last layers
    for branch in head.branches:
        nn.init.normal_(branch[2].weight)
        nn.init.normal_(branch[2].bias)
    b0, b1 = head.branches[0](x), head.branches[1](x)
    expected = base(x).detach().clone()
    expected[:, [0, 2]] += b0
    expected[:, [3]] += b1
    torch.testing.assert_close(head(x), expected)
    model = _student()
    add_connected_layers(model, [[0, 1], [2, 3]], 8)
    assert isinstance(model.head, ConnectedHead) and model(torch.randn(2, 3, 16, 16)).shape == (
        2,
        4,
    )
    with pytest.raises(ValueError, match="get_classifier\\(\\) gives ConnectedHead"):
        add_connected_layers(model, [[0, 1]], 8)


def test_training_lowers_the_loss_and_resumes_bit_exact(
    tmp_path, data, vit_teacher_run, specialist_run
):
    # a ViT teacher on classes 0 and 1 and a CNN specialist on 2 and 3, into a CNN with
    # structurally connected layers
    student = "resnet_pico"
    args = {
        "teachers": [str(vit_teacher_run), str(specialist_run)],
        "classes": [[0, 1], [2, 3]],
        "connected_hidden": 8,
    }
    recipe = RECIPE.replace(
        task="knowledge_concentration", task_args=args, checkpoint_every_steps=1
    )
    _, before = validate_before_training("knowledge_concentration", args, _student(student), data)
    res = fit(_student(student), data, recipe, tmp_path / "full", progress=False)
    assert res.status == "completed"
    assert res.history[-1]["val_kd"] < before["kd"]
    assert res.history[0]["spl_lambda0"] > 0 and 0 < res.history[0]["train_spl_kept"] < 1

    # stopped inside the second epoch
    a, _ = assert_resumes_bit_exact(
        lambda: _student(student), data, recipe, tmp_path / "full", tmp_path / "cut", stop_step=5
    )
    assert {"extra/task/spl_lambda", "model/head.branches.1.2.weight"} <= a.keys()


def test_bad_arguments_fail_before_training(tmp_path, data, vit_teacher_run, specialist_run):
    with pytest.raises(ValueError, match="one class subset per teacher \\(2 teachers\\)"):
        create_task("knowledge_concentration", {"teachers": ["a", "b"], "classes": [[0, 1]]})
    with pytest.raises(ValueError, match="non-empty list of trained run folders"):
        create_task("knowledge_concentration", {"teachers": []})

    def run(classes):
        args = {"teachers": [str(vit_teacher_run), str(specialist_run)], "classes": classes}
        recipe = RECIPE.replace(task="knowledge_concentration", task_args=args)
        fit(_student(), data, recipe, tmp_path / "bad", progress=False)

    with pytest.raises(
        ValueError, match="classes\\[1\\] holds class 7 but dataset .* has 4 classes"
    ):
        run([[0, 1], [2, 7]])
    # the specialist predicts 2 classes: a subset of 3 fits neither it nor the data
    with pytest.raises(
        ValueError, match="teachers\\[1\\] resnet_pico .* predicts 2 classes but 3 or 4"
    ):
        run([[0, 1], [1, 2, 3]])
    assert not (tmp_path / "bad" / "checkpoints" / "last.safetensors").exists()
