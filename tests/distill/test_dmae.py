"""DMAE: masking, MAE's reconstruction loss and the feature alignment checked by hand; a
ViT student pre-trained from a ViT teacher, resumed bit for bit."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from _checks import RECIPE, assert_resumes_bit_exact, make_student, validate_before_training

from archbench.distill.dmae import (
    MaskedDecoder,
    MaskedDistillation,
    feature_alignment_loss,
    mask_patches,
    random_patch_mask,
    reconstruction_loss,
    sincos_positions,
)
from archbench.models import create_model
from archbench.train import create_task, fit

SMALL = {"decoder_dim": 64, "decoder_depth": 1, "decoder_heads": 4}


def _student(name="vit_pico"):
    return make_student(name)


def test_random_mask_hides_three_quarters_and_zeroes_those_patches():
    mask = random_patch_mask(5, 16, 0.75, torch.Generator().manual_seed(0))
    assert mask.shape == (5, 16) and torch.equal(mask.sum(1), torch.full((5,), 12.0))
    assert not torch.equal(mask[0], mask[1])  # drawn per sample
    x = torch.randn(2, 3, 8, 8)
    m = torch.tensor([[1.0, 0, 0, 1], [0, 0, 0, 1]])  # a 2x2 grid of 4x4 patches
    out, orig = mask_patches(x, m, (2, 2)).numpy(), x.numpy()
    for b in range(2):
        for i in range(4):
            r, c = divmod(i, 2)
            rows, cols = slice(4 * r, 4 * r + 4), slice(4 * c, 4 * c + 4)
            expected = 0.0 if m[b, i] else orig[b, :, rows, cols]
            np.testing.assert_array_equal(
                out[b, :, rows, cols], expected + 0 * orig[b, :, rows, cols]
            )


def test_reconstruction_loss_by_hand():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2, 3, 4, 6))  # 2x3 grid of 2x2 patches
    pred = rng.normal(size=(2, 6, 12))
    mask = np.array([[1, 0, 1, 1, 0, 0], [0, 1, 0, 0, 0, 1]], dtype=float)

    def expected(norm_pix):
        errors = []
        for b in range(2):
            for i in range(6):
                if not mask[b, i]:
                    continue
                r, c = divmod(i, 3)
                target = (
                    images[b, :, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2].transpose(1, 2, 0).ravel()
                )
                if norm_pix:
                    target = (target - target.mean()) / math.sqrt(target.var(ddof=1) + 1e-6)
                errors.append(((pred[b, i] - target) ** 2).mean())
        return np.mean(errors)

    args = torch.tensor(pred), torch.tensor(images), torch.tensor(mask), 2
    assert float(reconstruction_loss(*args)) == pytest.approx(expected(False), rel=1e-6)
    assert float(reconstruction_loss(*args, norm_pix=True)) == pytest.approx(
        expected(True), rel=1e-6
    )


def test_feature_alignment_is_l1_of_normalized_features_on_weighted_positions():
    rng = np.random.default_rng(1)
    s, t = rng.normal(size=(2, 3, 5)), rng.normal(size=(2, 3, 5))
    w = np.array([[1, 0, 1], [1, 1, 0]], dtype=float)
    n = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)  # noqa: E731
    per_position = np.abs(n(t) - n(s)).mean(-1)
    expected = (per_position * w).sum() / w.sum()
    got = feature_alignment_loss(torch.tensor(s), torch.tensor(t), torch.tensor(w))
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_sincos_positions_and_the_decoder_ignores_what_the_encoder_put_at_masked_patches():
    pos = sincos_positions(8, (2, 3)).numpy()
    row, col = 1, 2  # position 5 of a 2x3 grid; frequencies 1 and 1/100 per axis
    expected = [
        math.sin(row),
        math.sin(row / 100),
        math.cos(row),
        math.cos(row / 100),
        math.sin(col),
        math.sin(col / 100),
        math.cos(col),
        math.cos(col / 100),
    ]
    np.testing.assert_allclose(pos[5], expected, rtol=1e-6, atol=1e-7)
    torch.manual_seed(0)
    dec = MaskedDecoder(16, 8, 1, 2, (2, 3), num_prefix_tokens=1, patch_pixels=12).eval()
    tokens = torch.randn(2, 7, 16)
    mask = torch.tensor([[1.0, 0, 0, 1, 0, 1], [0, 0, 1, 0, 0, 0]])
    changed = tokens.clone()
    changed[:, 1:][mask.bool()] = torch.randn(int(mask.sum()), 16)
    out = dec(tokens, mask)
    assert out.shape == (2, 6, 12)
    torch.testing.assert_close(dec(changed, mask), out)
    changed[0, 2] += 1.0  # a visible patch's token does matter
    assert not torch.allclose(dec(changed, mask), out)


def test_default_layers_are_three_quarters_of_the_depth():
    def depth(n):
        return SimpleNamespace(feature_info=[None] * n)

    # the official pair: ViT-B student block 8 of 12, ViT-L teacher block 17 of 24
    assert MaskedDistillation._layer(depth(12), None, "student_layer") == 8
    assert MaskedDistillation._layer(depth(24), None, "teacher_layer") == 17
    assert MaskedDistillation._layer(depth(6), -1, "student_layer") == 5


def test_the_objective_by_hand(vit_teacher_run, data):
    """Reconstruction of masked patches + 1 x alignment at block 4 of 6 (student on the
    masked image, teacher on the full one) over the visible patches and the class token."""
    model = _student().eval()
    task = create_task("dmae", {"teacher": str(vit_teacher_run), **SMALL})
    task.setup(model, data, RECIPE)
    task.trainable.eval()
    teacher = task.frozen["teacher"]
    x = torch.randn(2, 3, 16, 16)
    mask = random_patch_mask(2, 16, 0.75, torch.Generator().manual_seed(3))
    with torch.no_grad():
        parts = task.losses(x, model, mask)
        keep = mask.view(2, 1, 4, 4).repeat_interleave(4, 2).repeat_interleave(4, 3)
        masked = x * (1 - keep)
        pred = task.trainable["decoder"](model.forward_features(masked), mask).double().numpy()
        s = (
            task.trainable["projector"](model.forward_intermediates(masked, [4])[0])
            .double()
            .numpy()
        )
        t = teacher.forward_intermediates(task.teacher_input(x), [4])[0].double().numpy()
    img = x.double().numpy()
    rec = []
    for b in range(2):
        for i in np.flatnonzero(mask[b].numpy()):
            r, c = divmod(i, 4)
            target = img[b, :, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4].transpose(1, 2, 0).ravel()
            rec.append(((pred[b, i] - target) ** 2).mean())
    feat = []
    for b in range(2):
        for j in [0, *(1 + np.flatnonzero(mask[b].numpy() == 0))]:  # class token + visible
            sn, tn = s[b, j] / np.linalg.norm(s[b, j]), t[b, j] / np.linalg.norm(t[b, j])
            feat.append(np.abs(tn - sn).mean())
    assert float(parts["reconstruction"]) == pytest.approx(np.mean(rec), rel=1e-5)
    assert float(parts["feature"]) == pytest.approx(np.mean(feat), rel=1e-5)
    assert float(parts["loss"]) == pytest.approx(np.mean(rec) + np.mean(feat), rel=1e-5)


def _validation(args, model, data):
    return validate_before_training("dmae", args, model, data)[1]


def test_pretraining_lowers_the_losses_and_resumes_bit_exact(tmp_path, data, vit_teacher_run):
    args = {"teacher": str(vit_teacher_run), **SMALL}
    recipe = RECIPE.replace(task="dmae", task_args=args, checkpoint_every_steps=1)
    model = _student()
    before = _validation(args, model, data)
    assert _validation(args, model, data) == before  # validation masks are fixed
    res = fit(model, data, recipe, tmp_path / "full", progress=False)
    assert res.status == "completed"
    last = res.history[-1]
    assert last["val_feature"] < before["feature"]
    assert last["val_reconstruction"] < before["reconstruction"]
    assert "val_top1" not in last  # label-free

    # stopped inside the second epoch
    a, _ = assert_resumes_bit_exact(
        _student, data, recipe, tmp_path / "full", tmp_path / "cut", stop_step=5
    )
    assert any(k.startswith("extra/task/trainable.decoder") for k in a)
    # fine-tuning starts from the pre-trained weights
    from archbench.train import load_checkpoint

    fresh = create_model("vit_pico", num_classes=4, img_size=16)
    load_checkpoint(tmp_path / "full" / "checkpoints" / "last.safetensors", fresh)
    assert torch.equal(fresh.blocks[0].attn.qkv.weight, model.blocks[0].attn.qkv.weight)


def test_bad_students_and_ratios_fail_before_training(tmp_path, data, vit_teacher_run):
    recipe = RECIPE.replace(task="dmae", task_args={"teacher": str(vit_teacher_run), **SMALL})
    with pytest.raises(ValueError, match="dmae needs a patch-token student .* ResNet gives shape"):
        fit(_student("resnet_pico"), data, recipe, tmp_path / "a", progress=False)
    assert not (tmp_path / "a" / "checkpoints" / "last.safetensors").exists()
    few = recipe.replace(task_args={**recipe.task_args, "mask_ratio": 0.95})
    with pytest.raises(ValueError, match="mask_ratio=0.95 leaves no visible patch of .* 16"):
        fit(_student(), data, few, tmp_path / "b", progress=False)
    with pytest.raises(ValueError, match=r"mask_ratio must be in \(0, 1\)"):
        create_task("dmae", {"teacher": str(vit_teacher_run), "mask_ratio": 1.0})
    with pytest.raises(ValueError, match="student_layer=9 is out of range"):
        fit(
            _student(),
            data,
            recipe.replace(task_args={**recipe.task_args, "student_layer": 9}),
            tmp_path / "c",
            progress=False,
        )
