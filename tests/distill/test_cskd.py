"""CSKD: dense teacher predictions on the student's patch tokens, checked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _checks import RECIPE, assert_resumes_bit_exact, make_student, validate_before_training

from archbench.distill.cskd import cskd_loss, dense_logits, local_share
from archbench.models import create_model
from archbench.train import create_task, fit
from archbench.train.callbacks import TrainState


def _student(name="vit_pico"):
    return make_student(name)


def _np_log_softmax(z, axis):
    z = z - z.max(axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis, keepdims=True))


def test_cskd_loss_by_hand():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(1, 3, 2, 4))  # student grid 2x4, pooled 2x2 to the teacher's 1x2
    t = rng.normal(size=(1, 3, 1, 2)) * 2
    g = rng.normal(size=(1, 3)) * 2
    r = 0.75
    pooled = np.stack([s[0, :, :, 0:2].mean((1, 2)), s[0, :, :, 2:4].mean((1, 2))], axis=1)
    mixed = r * t[0, :, 0, :] + (1 - r) * g[0][:, None]  # (3 classes, 2 positions)
    labels = mixed.argmax(0)
    log_p = _np_log_softmax(pooled, 0)
    hard = -np.mean([log_p[labels[j], j] for j in range(2)])
    args = [torch.tensor(s), torch.tensor(t), torch.tensor(g), r]
    assert float(cskd_loss(*args, kind="hard")) == pytest.approx(hard, rel=1e-5)
    tau = 2.0
    ls, lt = _np_log_softmax(pooled / tau, 0), _np_log_softmax(mixed / tau, 0)
    soft = tau**2 * np.sum(np.exp(lt) * (lt - ls)) / 1  # summed over classes and positions, / batch
    assert float(cskd_loss(*args, kind="soft", tau=tau)) == pytest.approx(soft, rel=1e-5)


def test_cumulative_fusion_schedule():
    assert local_share(0, 4) == 1.0 and local_share(1, 4) == pytest.approx(0.75)
    assert local_share(1, 4, "x2") == pytest.approx(0.5625)
    assert local_share(1, 4, "cos") == pytest.approx(math.cos(math.pi / 8))
    with pytest.raises(ValueError, match="decay must be one of linear, x2, cos"):
        local_share(0, 4, "step")


def test_dense_logits_are_the_head_at_every_position():
    torch.manual_seed(0)
    cnn = create_model("resnet_pico", num_classes=4, img_size=16).eval()
    x = torch.randn(2, 3, 16, 16)
    feats = cnn.forward_features(x)
    dense = dense_logits(cnn, feats)
    w, b = cnn.head.weight, cnn.head.bias
    expected = torch.einsum("kc,bchw->bkhw", w, feats) + b.view(1, -1, 1, 1)
    torch.testing.assert_close(dense, expected)
    torch.testing.assert_close(dense.mean((2, 3)), cnn(x))  # linear head: mean = image logits
    vit = _student().eval()
    tokens = vit.forward_features(x)  # (2, 1 + 16, C), already normed
    dense = dense_logits(vit, tokens)
    patch = tokens[:, 1:] @ vit.head.weight.T + vit.head.bias  # (2, 16, K), row-major grid
    torch.testing.assert_close(dense, patch.transpose(1, 2).reshape(2, 4, 4, 4))


def test_training_lowers_the_cskd_loss_and_resumes_bit_exact(tmp_path, data, teacher_run):
    args = {"teacher": str(teacher_run)}
    recipe = RECIPE.replace(task="cskd", task_args=args, checkpoint_every_steps=1)
    model = _student()
    _, before = validate_before_training("cskd", args, model, data)
    res = fit(model, data, recipe, tmp_path / "full", progress=False)
    assert res.status == "completed"
    assert res.history[-1]["val_cskd"] < before["cskd"]

    # stopped inside the second epoch
    assert_resumes_bit_exact(
        _student, data, recipe, tmp_path / "full", tmp_path / "cut", stop_step=5
    )


def test_two_head_student_routes_the_teacher_to_the_distillation_head(data, teacher_run):
    model = _student("deit_pico_distilled").train()
    task = create_task("cskd", {"teacher": str(teacher_run), "alpha": 1.0})  # no label term
    task.setup(model, data, RECIPE)
    assert model.distilled_training
    x = (
        data.train.images[:4].float() / 255 - torch.tensor(data.mean).view(1, 3, 1, 1)
    ) / torch.tensor(data.std).view(1, 3, 1, 1)
    from archbench.train.tasks import Batch

    y = data.train.labels[:4]
    batch = Batch(views=[x], targets=torch.eye(4)[y], labels=y, index=torch.arange(4))
    state = TrainState(model=model, optimizer=None, recipe=RECIPE, data=data, out_dir=".")
    out = task.step(batch, state)
    out["loss"].backward()
    assert model.head.weight.grad is None or not model.head.weight.grad.any()
    assert model.head_dist.weight.grad.abs().sum() > 0
    task.on_fit_end(state, None)
    assert not model.distilled_training


def test_a_head_that_cannot_classify_one_position_fails_before_training(
    tmp_path, data, teacher_run
):
    recipe = RECIPE.replace(task="cskd", task_args={"teacher": str(teacher_run)})
    with pytest.raises(ValueError, match="CrossViT.forward_head cannot take one position"):
        fit(_student("crossvit_pico"), data, recipe, tmp_path / "x", progress=False)
    assert not (tmp_path / "x" / "checkpoints" / "last.safetensors").exists()
    with pytest.raises(ValueError, match="decay must be one of"):
        create_task("cskd", {"teacher": str(teacher_run), "decay": "step"})
