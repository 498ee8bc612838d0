"""ScaleKD: the dual-view loss, the cross-attention projector and teacher parameter
perception checked by hand; ViT -> CNN and ViT -> MLP-mixer training and resume."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.fft
import torch
import torch.nn.functional as F
from _checks import RECIPE, assert_resumes_bit_exact, make_student, validate_before_training

from archbench.distill.scalekd import (
    CrossAttentionProjector,
    dct_matrix,
    mimic_loss,
    remove_direct_component,
)
from archbench.train import create_task, fit
from archbench.train.tasks import Batch


def _student(name="resnet_pico"):
    return make_student(name)


def _normalize(a):
    return a / np.sqrt((a**2).sum(axis=1, keepdims=True))


def test_dct_is_scipys_and_dropping_its_dc_term_subtracts_the_channel_means():
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 5))
    coeffs = (
        dct_matrix(4, dtype=torch.float64) @ torch.tensor(x) @ dct_matrix(5, dtype=torch.float64).T
    )
    np.testing.assert_allclose(
        coeffs.numpy(), scipy.fft.dctn(x, axes=(-2, -1), norm="ortho"), atol=1e-12
    )
    got = remove_direct_component(torch.tensor(x))
    np.testing.assert_allclose(got.numpy(), x - x.mean(axis=(2, 3), keepdims=True), atol=1e-12)


def test_mimic_loss_by_hand():
    rng = np.random.default_rng(1)
    s, t = rng.normal(size=(2, 3, 2, 3)), rng.normal(size=(2, 3, 2, 3))
    spatial = ((_normalize(s) - _normalize(t)) ** 2).sum() / 2
    s0, t0 = s - s.mean(axis=(2, 3), keepdims=True), t - t.mean(axis=(2, 3), keepdims=True)
    frequency = ((_normalize(s0) - _normalize(t0)) ** 2).sum() / 2
    got_s = mimic_loss(torch.tensor(s), torch.tensor(t), frequency=False)
    got_f = mimic_loss(torch.tensor(s), torch.tensor(t), frequency=True)
    assert float(got_s) == pytest.approx(spatial, rel=1e-5)
    assert float(got_f) == pytest.approx(frequency, rel=1e-5)
    # maps that differ only by each channel's constant agree in the frequency view alone
    shifted = torch.tensor(s) + torch.tensor([2.0, -1.0, 0.5]).view(1, 3, 1, 1)
    assert float(mimic_loss(shifted, torch.tensor(s), frequency=True)) < 1e-9
    assert float(mimic_loss(shifted, torch.tensor(s), frequency=False)) > 1.0


def test_cross_attention_projector_by_hand():
    torch.manual_seed(0)
    proj = CrossAttentionProjector(
        3, (2, 2), 4, (1, 2), num_heads=2, softmax_scale=5.0, learned_query=True
    )
    proj.eval()
    x = torch.randn(1, 3, 2, 2)
    got = proj(x)[0].detach().numpy()

    def w(layer):
        return layer.weight.detach().numpy().astype(np.float64), layer.bias.detach().numpy()

    with torch.no_grad():  # the 3x3 conv + BN + ReLU is the plain torch stem
        keys_in = (proj.student_in(x) + proj.pos_embed)[0].reshape(3, 4).T.numpy()
    wc, bc = w(proj.query_in[0])
    query = proj.query.detach().numpy()[0].reshape(4, 2).T
    qs = np.maximum(query @ wc[:, :, 0, 0].T + bc, 0)
    (wq, bq), (wk, bk), (wv, bv), (wo, bo) = (w(m) for m in (proj.q, proj.k, proj.v, proj.proj))
    q, k, v = qs @ wq.T + bq, keys_in @ wk.T + bk, keys_in @ wv.T + bv
    heads = []
    for h in range(2):
        sl = slice(2 * h, 2 * h + 2)
        logits = q[:, sl] @ k[:, sl].T * 5.0 / np.sqrt(2.0)
        a = np.exp(logits - logits.max(axis=1, keepdims=True))
        heads.append((a / a.sum(axis=1, keepdims=True)) @ v[:, sl])
    z = np.concatenate(heads, axis=1) @ wo.T + bo
    g, b = proj.norm.weight.detach().numpy(), proj.norm.bias.detach().numpy()
    z = (z - z.mean(1, keepdims=True)) / np.sqrt(z.var(1, keepdims=True) + 1e-5) * g + b
    (w1, b1), (w2, b2) = w(proj.mlp[0]), w(proj.mlp[2])
    expected = z + np.maximum(z @ w1.T + b1, 0) @ w2.T + b2
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def _task(teacher_run, data, student, **args):
    task = create_task("scalekd", {"teacher": str(teacher_run), **args})
    task.setup(student, data, RECIPE)
    return task


def test_perception_runs_the_teachers_later_blocks(vit_teacher_run, data):
    task = _task(vit_teacher_run, data, _student())
    teacher = task.frozen["teacher"]
    x = task.teacher_input(torch.randn(3, 3, 16, 16))
    with torch.no_grad():
        own = teacher.tokens_to_map(teacher.forward_intermediates(x, [-2])[0])
        final = teacher.tokens_to_map(teacher.forward_features(x))
        # the teacher's own features at teacher_layer give back its own final features
        torch.testing.assert_close(task.perceive(x, own), final)
        # two copies of the batch, stacked, come back stacked
        torch.testing.assert_close(
            task.perceive(x, torch.cat([own, own])), torch.cat([final, final])
        )
        # the last block and final norm by hand, on other features
        other = torch.randn_like(own)
        tokens = teacher.forward_intermediates(x, [-2])[0].clone()
        tokens[:, 1:] = other.flatten(2).transpose(1, 2)
        by_hand = teacher.tokens_to_map(teacher.norm(teacher.blocks[-1](tokens)))
        torch.testing.assert_close(task.perceive(x, other), by_hand)
    maps = torch.randn_like(own, requires_grad=True)
    task.perceive(x, maps).square().sum().backward()
    assert maps.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_the_objective_is_the_four_terms_and_kd(vit_teacher_run, data):
    """Every term by hand from the modules: which projector, query, target and weight."""
    model = _student().eval()
    task = _task(vit_teacher_run, data, model)
    task.trainable.eval()
    teacher, p = task.frozen["teacher"], task.trainable
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        parts = task.losses(x, model)
        s3, s4 = model.forward_intermediates(x, [-2, -1])
        xt = task.teacher_input(x)
        target = teacher.tokens_to_map(teacher.forward_features(xt)).double().numpy()
        views = {}
        for view in ("spatial", "frequency"):
            mid = p[f"s3_{view}"](s3).transpose(1, 2).reshape(2, 128, 4, 4)
            perceived = task.perceive(xt, mid)
            out = p[f"s4_{view}"](s4, query=perceived).transpose(1, 2).reshape(2, 128, 4, 4)
            views[view] = (perceived.double().numpy(), out.double().numpy())
        assert torch.equal(parts["teacher_logits"], teacher(xt))
        torch.testing.assert_close(parts["logits"], model(x))

    def spatial(a, b):
        return ((_normalize(a) - _normalize(b)) ** 2).sum() / 2

    def frequency(a, b):
        return spatial(
            a - a.mean(axis=(2, 3), keepdims=True), b - b.mean(axis=(2, 3), keepdims=True)
        )

    expected = {
        "s3_spatial": 0.08 * spatial(views["spatial"][0], target),
        "s4_spatial": 0.08 * spatial(views["spatial"][1], target),
        "s3_frequency": 0.06 * frequency(views["frequency"][0], target),
        "s4_frequency": 0.06 * frequency(views["frequency"][1], target),
    }
    for key, value in expected.items():
        assert float(parts[key]) == pytest.approx(value, rel=1e-4), key
    assert p["s3_spatial"].scale == pytest.approx(5.0 / math.sqrt(128 / 8))

    # the step: (1 - 0.5) CE + 0.5 * 1^2 * KL(p_t || p_s) + the four terms
    labels = torch.tensor([1, 3])
    batch = Batch(
        views=[x], targets=F.one_hot(labels, 4).float(), labels=labels, index=torch.arange(2)
    )
    with torch.no_grad():
        loss = task.step(batch, SimpleNamespace(model=model))["loss"]
    s_log = torch.log_softmax(parts["logits"].double(), -1).numpy()
    t_log = torch.log_softmax(parts["teacher_logits"].double(), -1).numpy()
    ce = -s_log[[0, 1], [1, 3]].mean()
    kl = (np.exp(t_log) * (t_log - s_log)).sum(1).mean()
    assert float(loss) == pytest.approx(0.5 * ce + 0.5 * kl + sum(expected.values()), rel=1e-4)


@pytest.mark.parametrize("student, check_resume", [("resnet_pico", True), ("mixer_pico", False)])
def test_vit_teacher_training_lowers_the_feature_loss_and_resumes_bit_exact(
    tmp_path, data, vit_teacher_run, student, check_resume
):
    args = {"teacher": str(vit_teacher_run)}
    recipe = RECIPE.replace(task="scalekd", task_args=args, checkpoint_every_steps=1)
    model = _student(student)
    _, before = validate_before_training("scalekd", args, model, data)
    res = fit(model, data, recipe, tmp_path / "full", progress=False)
    assert res.status == "completed"
    assert res.history[-1]["val_feature"] < before["feature"]
    if not check_resume:
        return
    # stopped inside the second epoch
    a, _ = assert_resumes_bit_exact(
        lambda: _student(student), data, recipe, tmp_path / "full", tmp_path / "cut", stop_step=5
    )
    assert any(k.startswith("extra/task/trainable.s4_frequency") for k in a)


def test_bad_layers_and_heads_fail_before_training(tmp_path, data, vit_teacher_run):
    def run(out, **args):
        recipe = RECIPE.replace(task="scalekd", task_args={"teacher": str(vit_teacher_run), **args})
        fit(_student(), data, recipe, tmp_path / out, progress=False)

    with pytest.raises(
        ValueError, match="teacher_layer=-1 is the teacher's last .* choose an earlier"
    ):
        run("a", teacher_layer=-1)
    with pytest.raises(ValueError, match="student_layers=7 is out of range: ResNet has 4"):
        run("b", student_layers=[1, 7])
    with pytest.raises(ValueError, match="num_heads=3 does not divide the teacher's width 128"):
        run("c", num_heads=3)
    assert not (tmp_path / "a" / "checkpoints" / "last.safetensors").exists()
    with pytest.raises(ValueError, match="student_layers must be two"):
        create_task("scalekd", {"teacher": str(vit_teacher_run), "student_layers": [-1]})


def test_a_cnn_teacher_perceives_through_its_stage_maps(teacher_run, data):
    """The same hook swaps an NCHW stage output; a ViT student learns from a CNN teacher."""
    model = _student("vit_pico")
    task = _task(teacher_run, data, model)
    teacher = task.frozen["teacher"]
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        own = teacher.forward_intermediates(x, [-2])[0]
        torch.testing.assert_close(task.perceive(x, own), teacher.forward_features(x))
    parts = task.losses(x, model)
    sum(parts[k] for k in task._TERMS).backward()
    assert model.patch_embed.proj.weight.grad.abs().sum() > 0
    assert task.trainable["s3_frequency"].query.grad.abs().sum() > 0
