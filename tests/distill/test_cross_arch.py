"""Cross-architecture KD: PCA and GL projectors and multi-view adversarial training,
checked by hand and on CNN -> ViT and ViT -> CNN pairs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _checks import RECIPE, assert_resumes_bit_exact, make_student, validate_before_training

from archbench.distill.cross_arch import GroupLinearProjector, gl_loss, multi_view, pca_loss
from archbench.train import create_task, fit


def _student(name="vit_pico"):
    return make_student(name)


def _np_heads(x, heads):  # (B, N, D) -> (B, heads, N, d)
    b, n, d = x.shape
    return x.reshape(b, n, heads, d // heads).transpose(0, 2, 1, 3)


def _np_attention(q, k, v):
    s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1])
    e = np.exp(s - s.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)) @ v


def test_pca_loss_by_hand():
    rng = np.random.default_rng(0)
    b, n, d, heads = 2, 3, 4, 2
    q, k, v = (rng.normal(size=(b, n, d)) for _ in range(3))
    h_t = rng.normal(size=(b, n, d)) * 3 + 1
    mu, var = h_t.mean(-1, keepdims=True), h_t.var(-1, keepdims=True)
    t = _np_heads((h_t - mu) / np.sqrt(var + 1e-5), heads)  # Q_T = K_T = V_T
    qs, ks, vs = (_np_heads(m, heads) for m in (q, k, v))
    masks = [rng.random(size=qs.shape) < 0.5 for _ in range(3)]
    gq, gk, gv = (np.where(m, t, s) for m, s in zip(masks, (qs, ks, vs)))
    attn = np.mean((_np_attention(gq, gk, gv) - _np_attention(t, t, t)) ** 2)
    rel = lambda x: x @ x.transpose(0, 1, 3, 2) / np.sqrt(x.shape[-1])  # noqa: E731
    value = np.mean((rel(vs) - rel(t)) ** 2)
    tq, tk, tv, th = (torch.tensor(a, dtype=torch.float32) for a in (q, k, v, h_t))
    got = pca_loss((tq, tk, tv), th, heads, [torch.tensor(m) for m in masks])
    assert float(got[0]) == pytest.approx(attn, rel=1e-4)
    assert float(got[1]) == pytest.approx(value, rel=1e-4)
    plain = pca_loss((tq, tk, tv), th, heads)  # no crossing: the student's own attention
    expected = np.mean((_np_attention(qs, ks, vs) - _np_attention(t, t, t)) ** 2)
    assert float(plain[0]) == pytest.approx(expected, rel=1e-4)


def test_group_linear_projector_shares_one_layer_per_block():
    torch.manual_seed(0)
    proj = GroupLinearProjector(3, 5, (3, 3), group=2, dropout=0.0)
    assert proj.weight.shape == (4, 5, 3)  # 3x3 grid in 2x2 blocks: 4 groups
    x = torch.randn(2, 3, 3, 3)
    out = proj(x).detach().numpy()
    w, bias, xs = proj.weight.detach().numpy(), proj.bias.detach().numpy(), x.numpy()
    for i in range(3):
        for j in range(3):
            g = (i // 2) * 2 + j // 2
            np.testing.assert_allclose(
                out[:, i * 3 + j], xs[:, :, i, j] @ w[g].T + bias[g], rtol=1e-5, atol=1e-6
            )
    target = torch.randn(2, 9, 5)
    assert float(gl_loss(torch.tensor(out), target)) == pytest.approx(
        np.mean((out - target.numpy()) ** 2), rel=1e-5
    )


def test_multi_view_generator():
    x = torch.randn(6, 3, 16, 16)
    assert torch.equal(multi_view(x, 0.0, 16), x)
    torch.manual_seed(0)
    views = multi_view(x, 1.0, 16)
    assert all(not torch.equal(views[i], x[i]) for i in range(6))


def test_adversarial_terms_reach_only_their_side(data, teacher_run):
    task = create_task("cross_arch_kd", {"teacher": str(teacher_run)})
    task.setup(_student(), data, RECIPE)
    projected = torch.randn(2, 4, 128, requires_grad=True)
    l_mad, l_mvg = task.adversarial(projected, torch.randn(2, 4, 128))
    l_mad.backward()
    assert projected.grad is None
    assert all(p.grad is not None and p.grad.any() for p in task.trainable["disc"].parameters())
    task.trainable["disc"].zero_grad()
    l_mvg.backward()
    assert projected.grad.any()
    assert all(p.grad is None or not p.grad.any() for p in task.trainable["disc"].parameters())


def test_cnn_to_vit_lowers_the_distillation_loss_and_resumes_bit_exact(tmp_path, data, teacher_run):
    args = {"teacher": str(teacher_run)}
    recipe = RECIPE.replace(task="cross_arch_kd", task_args=args, checkpoint_every_steps=1)
    model = _student()
    task, before = validate_before_training("cross_arch_kd", args, model, data)
    assert task.grid == (2, 2) and task.num_heads == 2  # resnet_pico's last stage: 2x2, 128 wide
    res = fit(model, data, recipe, tmp_path / "full", progress=False)
    assert res.status == "completed"
    assert res.history[-1]["val_distill"] < before["distill"]

    # stopped inside the second epoch
    a, _ = assert_resumes_bit_exact(
        _student, data, recipe, tmp_path / "full", tmp_path / "cut", stop_step=5
    )
    assert any(k.startswith("extra/task/trainable.gl") for k in a)


def test_vit_to_cnn_lowers_the_distillation_loss(tmp_path, data, vit_teacher_run):
    args = {"teacher": str(vit_teacher_run)}
    model = _student("resnet_pico")
    task, before = validate_before_training("cross_arch_kd", args, model, data)
    assert task.s_pos == 2 and task.grid == (4, 4)  # the stage whose grid matches ViT's 4x4
    res = fit(
        model,
        data,
        RECIPE.replace(task="cross_arch_kd", task_args=args),
        tmp_path / "r",
        progress=False,
    )
    assert res.history[-1]["val_distill"] < before["distill"]


def test_bad_layers_and_heads_fail_before_training(tmp_path, data, teacher_run):
    def run(**extra):
        args = {"teacher": str(teacher_run), **extra}
        fit(
            _student(),
            data,
            RECIPE.replace(task="cross_arch_kd", task_args=args),
            tmp_path / "x",
            progress=False,
        )

    with pytest.raises(
        ValueError,
        match=r"ResNet has 4 feature stages .* teacher_layer=7 is out of range: use -4 to 3",
    ):
        run(teacher_layer=7)
    with pytest.raises(ValueError, match="have 128 channels, which 3 heads do not divide"):
        run(heads=3)
    with pytest.raises(ValueError, match="student_layer=6 is out of range: use -6 to 5"):
        run(student_layer=6)
    assert not (tmp_path / "x" / "checkpoints" / "last.safetensors").exists()
