"""MEAL V2 (task ``meal_v2``): the losses and the reversed gradient by hand, the
discriminator's learning rate, initialisation, training, resume and bad arguments."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _checks import (
    RECIPE,
    FixedOutputs,
    assert_resumes_bit_exact,
    make_student,
    np_softmax,
    validate_before_training,
)
from safetensors.torch import load_file

from archbench.distill.meal_v2 import LogitDiscriminator
from archbench.train import create_task, fit


def _student(name="resnet_pico"):
    return make_student(name)


def test_losses_and_reversed_gradient_by_hand():
    s = np.array([[1.0, -0.5, 2.0, 0.0], [0.1, 0.2, -1.0, 0.7]])
    t1 = np.array([[0.5, 0.0, 3.0, -1.0], [2.0, -1.0, 0.0, 0.3]])
    t2 = np.array([[1.5, 0.2, 0.0, -0.5], [0.0, 1.0, -1.0, 2.0]])
    p_ens = (np_softmax(t1) + np_softmax(t2)) / 2
    kd = -(p_ens * np.log(np_softmax(s))).sum(1).mean()
    # the discriminator, C=4 -> 2 -> 2 -> 2, with set weights
    rng = np.random.default_rng(5)  # ReLUs active on the student's rows: D passes gradient
    w1, b1 = rng.normal(size=(2, 4)), rng.normal(size=2)
    w2, b2 = rng.normal(size=(2, 2)), rng.normal(size=2)
    w3, b3 = rng.normal(size=(2, 2)), rng.normal(size=2)
    x = np.concatenate([s, (t1 + t2) / 2])
    h = np.maximum(x @ w1.T + b1, 0)
    h = np.maximum(h @ w2.T + b2, 0)
    o = h @ w3.T + b3
    y = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], dtype=float)
    sig = 1 / (1 + np.exp(-o))
    disc = -(y * np.log(sig) + (1 - y) * np.log(1 - sig)).mean()

    grl = 0.5
    task = create_task("meal_v2", {"teachers": ["a", "b"], "grl": grl})
    d = LogitDiscriminator(4, reduction=2, min_width=2)
    f32 = torch.float32
    for layer, (w, b) in zip([d.net[0], d.net[2], d.net[4]], [(w1, b1), (w2, b2), (w3, b3)]):
        layer.weight.data, layer.bias.data = torch.tensor(w, dtype=f32), torch.tensor(b, dtype=f32)
    task.trainable["discriminator"] = d
    task.frozen["teachers"] = FixedOutputs(
        [torch.tensor(t1, dtype=f32), torch.tensor(t2, dtype=f32)]
    )
    logits = torch.tensor(s, dtype=f32, requires_grad=True)
    got_kd, got_disc, disc_acc = task.losses(logits, torch.zeros(2, 3, 4, 4))
    assert float(got_kd.detach()) == pytest.approx(kd, rel=1e-5)
    assert float(got_disc.detach()) == pytest.approx(disc, rel=1e-5)
    assert float(disc_acc) == pytest.approx((o.argmax(1) == y.argmax(1)).mean())
    (got_kd + got_disc).backward()
    # the student gets grad(kd) - grl * grad(disc); the discriminator grad(disc)
    plain = torch.tensor(s, dtype=f32, requires_grad=True)
    kd_only, _, _ = task.losses(plain, torch.zeros(2, 3, 4, 4))
    (g_kd,) = torch.autograd.grad(kd_only, plain)
    reversed_grads = [p.grad.clone() for p in d.parameters()]
    # the plain gradient of the discriminator loss, written out without the task's helpers
    ws = [torch.tensor(a, dtype=f32, requires_grad=True) for a in (w1, b1, w2, b2, w3, b3)]
    xt = torch.cat([plain, torch.tensor((t1 + t2) / 2, dtype=f32)])
    ht = torch.relu(torch.relu(xt @ ws[0].T + ws[1]) @ ws[2].T + ws[3])
    sig_t = torch.sigmoid(ht @ ws[4].T + ws[5])
    yt = torch.tensor(y, dtype=f32)
    disc_plain = -(yt * sig_t.log() + (1 - yt) * (1 - sig_t).log()).mean()
    g_disc = torch.autograd.grad(disc_plain, [plain, *ws])
    assert float(g_disc[0].abs().sum(1).min()) > 1e-3
    torch.testing.assert_close(logits.grad, g_kd - grl * g_disc[0])
    for got, want in zip(reversed_grads, g_disc[1:]):
        torch.testing.assert_close(got, want)
    # hand-checked direction: p_ens - softmax(s) is minus the soft cross-entropy's gradient
    np.testing.assert_allclose(g_kd.numpy(), (np_softmax(s) - p_ens) / 2, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("student, resume", [("vit_pico", True), ("resnet_pico", False)])
def test_training_lowers_the_loss_and_resumes_bit_exact(
    tmp_path, data, teacher_run, vit_teacher_run, student, resume
):
    # an ensemble of a CNN and a ViT teacher, into a ViT and into a CNN
    args = {"teachers": [str(teacher_run), str(vit_teacher_run)]}
    recipe = RECIPE.replace(task="meal_v2", task_args=args, checkpoint_every_steps=1)
    _, before = validate_before_training("meal_v2", args, _student(student), data)
    rates = []

    class Rates:
        def on_step_end(self, state):
            rates.append([g["lr"] for g in state.optimizer.param_groups])

    res = fit(
        _student(student), data, recipe, tmp_path / "full", callbacks=[Rates()], progress=False
    )
    assert res.status == "completed"
    assert res.history[-1]["val_kd"] < before["kd"]
    # the discriminator's groups (the last two) learn at disc_lr times the schedule's rate
    for lrs in rates:
        assert lrs[-2:] == pytest.approx([0.01 * lrs[0]] * 2) and lrs[0] > 0
    if not resume:
        return

    # stopped inside the second epoch
    a, _ = assert_resumes_bit_exact(
        lambda: _student(student), data, recipe, tmp_path / "full", tmp_path / "cut", stop_step=5
    )
    assert "extra/task/trainable.discriminator.net.4.weight" in a


def test_init_loads_a_trained_run_and_refuses_another_architecture(
    tmp_path, data, teacher_run, vit_teacher_run
):
    model = _student("resnet_pico")
    task = create_task("meal_v2", {"teachers": [str(vit_teacher_run)], "init": str(teacher_run)})
    task.setup(model, data, RECIPE)
    trained = load_file(teacher_run / "checkpoints" / "best.safetensors")
    for k, v in model.state_dict().items():
        assert torch.equal(v, trained[f"model/{k}"]), k
    args = {"teachers": [str(teacher_run)], "init": str(vit_teacher_run)}
    with pytest.raises(ValueError, match="holds vit_pico .* which does not fit the student ResNet"):
        fit(
            _student("resnet_pico"),
            data,
            RECIPE.replace(task="meal_v2", task_args=args),
            tmp_path / "a",
        )
    with pytest.raises(FileNotFoundError, match="init .*give a trained run folder of the student"):
        args = {"teachers": [str(teacher_run)], "init": str(tmp_path / "none")}
        fit(_student(), data, RECIPE.replace(task="meal_v2", task_args=args), tmp_path / "b")
    with pytest.raises(ValueError, match="grl .* must be >= 0"):
        create_task("meal_v2", {"teachers": [str(teacher_run)], "grl": -1})
    assert not (tmp_path / "a" / "checkpoints" / "last.safetensors").exists()
