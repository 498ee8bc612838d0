"""Distillation: teachers, logit KD and DeiT token distillation, checked by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _checks import RECIPE, assert_resumes_bit_exact, make_student, validate_before_training

from archbench.data import load_dataset
from archbench.distill import TeacherInput, kd_loss, load_teacher
from archbench.models import create_model
from archbench.train import create_task, fit


def _student(name="resnet_pico"):
    return make_student(name)


def test_kd_loss_is_t_squared_times_kl_of_softened_distributions():
    s = np.array([[1.0, -0.5, 2.0], [0.1, 0.2, -1.0]])
    t = np.array([[0.5, 0.0, 3.0], [2.0, -1.0, 0.0]])
    temp = 3.0

    def softmax(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    p_s, p_t = softmax(s / temp), softmax(t / temp)
    expected = temp**2 * np.mean(np.sum(p_t * (np.log(p_t) - np.log(p_s)), axis=1))
    got = kd_loss(torch.tensor(s), torch.tensor(t), temp)
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_kd_with_a_one_hot_teacher_is_cross_entropy():
    torch.manual_seed(0)
    student = torch.randn(5, 4)
    labels = torch.tensor([0, 3, 1, 1, 2])
    teacher = F.one_hot(labels, 4).float() * 60.0  # softmax is one-hot to float precision
    got = kd_loss(student, teacher, 1.0)
    assert float(got) == pytest.approx(float(F.cross_entropy(student, labels)), rel=1e-5)


def test_deit_hard_target_is_the_teachers_argmax(teacher_run, data):
    task = create_task("deit", {"teacher": str(teacher_run), "kind": "hard"})
    dist = torch.tensor([[2.0, 0.0, -1.0, 0.5], [0.0, 1.0, 0.0, 0.0]])
    teacher = torch.tensor([[0.1, 0.2, 3.0, 0.0], [5.0, 0.0, 0.0, 0.0]])
    # hand-computed cross-entropy against classes 2 and 0
    expected = (
        -(
            math.log(math.exp(-1.0) / sum(math.exp(v) for v in (2.0, 0.0, -1.0, 0.5)))
            + math.log(math.exp(0.0) / (3 + math.exp(1.0)))
        )
        / 2
    )
    assert float(task.distill_term(dist, teacher)) == pytest.approx(expected, rel=1e-6)
    soft = create_task("deit", {"teacher": str(teacher_run), "kind": "soft", "tau": 2.0})
    assert float(soft.distill_term(dist, teacher)) == pytest.approx(
        float(kd_loss(dist, teacher, 2.0))
    )


@pytest.mark.parametrize(
    "method, student, args, key",
    [
        ("kd", "resnet_pico", {"temperature": 4.0}, "kd"),
        ("deit", "deit_pico_distilled", {"kind": "hard"}, "distill"),
        ("deit", "deit_pico_distilled", {"kind": "soft"}, "distill"),
    ],
)
def test_training_lowers_the_distillation_loss_and_resumes_bit_exact(
    tmp_path, data, teacher_run, method, student, args, key
):
    args = {"teacher": str(teacher_run), **args}
    recipe = RECIPE.replace(task=method, task_args=args, checkpoint_every_steps=1)
    if student.startswith("deit"):  # a ViT from scratch on 64 images needs a gentler step
        recipe = recipe.replace(lr=1e-3)
    model = _student(student)
    _, before = validate_before_training(method, args, model, data)
    res = fit(model, data, recipe, tmp_path / "full", progress=False)
    assert res.status == "completed"
    assert res.history[-1][f"val_{key}"] < before[key]

    # stopped inside the second epoch
    assert_resumes_bit_exact(
        lambda: _student(student), data, recipe, tmp_path / "full", tmp_path / "cut", stop_step=5
    )


def test_teacher_cache_gives_the_same_student(tmp_path, data, teacher_run):
    def run(out, cache):
        args = {"teacher": str(teacher_run), "cache": cache}
        recipe = RECIPE.replace(task="kd", task_args=args)
        model = _student()
        fit(model, data, recipe, out, progress=False)
        return model.state_dict()

    cache = str(tmp_path / "cache")
    plain = run(tmp_path / "plain", "")
    filling = run(tmp_path / "fill", cache)
    files = sorted(p.name for p in next((tmp_path / "cache").iterdir()).iterdir())
    assert files == ["epoch0.safetensors", "epoch1.safetensors", "teacher.json"]
    reading = run(tmp_path / "read", cache)
    for k in plain:
        assert torch.equal(plain[k], filling[k]) and torch.equal(plain[k], reading[k]), k


def test_teacher_input_conversion_by_hand():
    x = torch.rand(2, 1, 4, 4)
    conv = TeacherInput([0.5], [0.25], [0.4, 0.5, 0.6], [0.2, 0.2, 0.2], 1, 3, 8)
    out = conv((x - 0.5) / 0.25)
    pixels = x.expand(-1, 3, -1, -1)
    mean = torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1)
    expected = F.interpolate((pixels - mean) / 0.2, size=(8, 8), mode="bilinear")
    torch.testing.assert_close(out, expected)
    same = TeacherInput([0.5], [0.25], [0.5], [0.25], 1, 1, None)
    assert same.identity and torch.equal(same(x), x)


def test_bad_teachers_fail_before_training(tmp_path, data, teacher_run):
    other = load_dataset("shapes:n_train=64,n_val=32,n_test=16,img_size=16,num_classes=5", seed=0)
    recipe = RECIPE.replace(task="kd", task_args={"teacher": str(teacher_run)})
    model5 = create_model("resnet_pico", num_classes=5, img_size=16)
    with pytest.raises(ValueError, match="predicts 4 classes but dataset .* has 5"):
        fit(model5, other, recipe, tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="is the teacher's run folder"):
        fit(_student(), data, recipe, teacher_run, progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist; give a trained run folder"):
        load_teacher(tmp_path / "nothing")
    # a model.json that names another architecture than the checkpoint holds
    wrong = tmp_path / "wrong"
    (wrong / "checkpoints").mkdir(parents=True)
    (wrong / "checkpoints" / "best.safetensors").write_bytes(
        (teacher_run / "checkpoints" / "best.safetensors").read_bytes()
    )
    info = json.loads((teacher_run / "model.json").read_text())
    (wrong / "model.json").write_text(json.dumps({**info, "model": "convnext_pico"}))
    with pytest.raises(ValueError, match="does not fit convnext_pico"):
        load_teacher(wrong)
    with pytest.raises(ValueError, match="needs a student with a distillation head"):
        fit(
            _student(),
            data,
            RECIPE.replace(task="deit", task_args={"teacher": str(teacher_run)}),
            tmp_path / "b",
        )
    with pytest.raises(ValueError, match="needs argument.*teacher"):
        RECIPE.replace(task="kd")


def test_deit_inference_averages_the_two_heads(teacher_run, data):
    model = _student("deit_pico_distilled").eval()
    x = torch.randn(2, 3, 16, 16)
    cls, dist = model.forward_distill(x)
    torch.testing.assert_close(model(x), (cls + dist) / 2)
