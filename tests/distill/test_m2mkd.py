"""m2mKD (task ``m2mkd``): the loss by hand, block splicing, per-module gradients,
training with an MoE student, resume, a separate meta model and bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _checks import RECIPE, SPEC, assert_resumes_bit_exact, make_student

from archbench.data import load_dataset
from archbench.distill.m2mkd import m2mkd_loss, run_blocks, split_blocks
from archbench.models import create_model
from archbench.train import (
    Batch,
    create_task,
    fit,
    load_checkpoint,
    read_checkpoint_meta,
    save_checkpoint,
)
from archbench.train.callbacks import TrainState
from archbench.train.engine import validate

# the students train on a smaller split of the same task (the teachers saw SPEC)
SMALL = "shapes:n_train=32,n_val=16,n_test=16,img_size=16,num_classes=4"
MOE = dict(depth=2, embed_dim=32, num_heads=2)  # a two-block MLP/KAN mixture-of-experts ViT


@pytest.fixture(scope="module")
def data():
    return load_dataset(SMALL, seed=0)


def _student(name="mlp_kan_pico", **kwargs):
    return make_student(name, **{**MOE, **kwargs})


def _batch(images, labels):
    targets = torch.nn.functional.one_hot(labels, 4).float()
    return Batch([images], targets, labels, torch.arange(len(labels)))


def _setup(args, model, data):
    task = create_task("m2mkd", args)
    task.setup(model, data, RECIPE)
    state = TrainState(model=model, optimizer=None, recipe=RECIPE, data=data, out_dir=".")
    task.to(torch.device("cpu"))
    return task, state


def test_m2mkd_loss_by_hand():
    s = np.array([[1.0, -0.5, 2.0, 0.0], [0.1, 0.2, -1.0, 0.7]])
    t = np.array([[0.5, 0.0, 3.0, -1.0], [2.0, -1.0, 0.0, 0.3]])
    y = np.array([[0.0, 0.0, 1.0, 0.0], [0.1, 0.7, 0.1, 0.1]])  # soft targets

    def log_softmax(z):
        z = z - z.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))

    for alpha, tau in ((0.5, 1.0), (0.3, 2.0)):
        ce = -(y * log_softmax(s)).sum(1).mean()
        lp_s, lp_t = log_softmax(s / tau), log_softmax(t / tau)
        kl_sum = (np.exp(lp_t) * (lp_t - lp_s)).sum()
        distill = kl_sum * tau**2 / s.size  # summed KL over batch x classes, as the official loss
        got = m2mkd_loss(torch.tensor(s), torch.tensor(t), torch.tensor(y), alpha, tau)
        assert float(got["distill"]) == pytest.approx(distill, rel=1e-6)
        assert float(got["loss"]) == pytest.approx((1 - alpha) * ce + alpha * distill, rel=1e-6)
    hard = m2mkd_loss(torch.tensor(s), torch.tensor(t), torch.tensor(y), 1.0, 1.0, "hard")
    expected = -(log_softmax(s)[0, 2] + log_softmax(s)[1, 0]) / 2  # teacher's argmax: 2, 0
    assert float(hard["loss"]) == pytest.approx(expected, rel=1e-6)


def test_split_blocks():
    assert split_blocks(6, 4) == [(0, 2), (2, 4), (4, 5), (5, 6)]
    assert split_blocks(4, 2) == [(0, 2), (2, 4)]
    with pytest.raises(ValueError, match="cannot split 2 blocks into 3 modules"):
        split_blocks(2, 3)


def test_run_blocks_splices_a_module_in_place_of_blocks():
    torch.manual_seed(0)
    model = create_model("vit_pico", num_classes=4, img_size=16).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        toks = model.forward_intermediates(x)
        # its own block-2 tokens in place of block 2's output: the same model
        torch.testing.assert_close(run_blocks(model, x, 2, toks[2]), model(x))
        torch.testing.assert_close(run_blocks(model, x, 1, toks[1], capture=4), toks[4])
        # block 3 on block 1's tokens (block 2 skipped): blocks 3.. see what was injected
        skipped = run_blocks(model, x, 2, toks[1], capture=3)
        assert torch.equal(skipped, model.blocks[3](toks[1]))
        with pytest.raises(ValueError, match="cannot take a module's"):
            run_blocks(model, x, 2, toks[1][:, :5])
    assert not model.blocks[2]._forward_hooks  # the splice is removed afterwards


def test_each_student_module_learns_only_from_its_own_pair(vit_teacher_run, data):
    model = _student(depth=4)
    task, state = _setup(
        {"teacher": str(vit_teacher_run), "num_modules": 2, "module": 1}, model, data
    )
    assert task.spans["teacher"] == [(0, 3), (3, 6)] and task.spans["student"] == [(0, 2), (2, 4)]
    assert sorted(task.trainable["stitch"]) == ["pre1"]  # the last module has its own head
    mean, std = torch.tensor(data.mean).view(1, 3, 1, 1), torch.tensor(data.std).view(1, 3, 1, 1)
    batch = _batch((data.train.images[:8].float() / 255 - mean) / std, data.train.labels[:8])
    out = task.step(batch, state)
    out["loss"].backward()
    moved = {
        n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0
    }
    assert moved and all(n.startswith(("blocks.2.", "blocks.3.", "norm.", "head.")) for n in moved)
    assert any(n.startswith("blocks.2.") for n in moved)
    assert task.trainable["stitch"]["pre1"][1].weight.grad.abs().sum() > 0


def test_a_student_whose_block_is_shared_across_depth_splices_too(vit_teacher_run, data):
    torch.manual_seed(1)  # WideNet: one attention + MoE block for every layer, own norms
    kw = dict(depth=2, embed_dim=48, num_heads=3, moe_hidden=96)
    model = create_model("widenet_pico", num_classes=4, img_size=16, **kw)
    task, state = _setup(
        {"teacher": str(vit_teacher_run), "num_modules": 2, "module": 1}, model, data
    )
    batch = _batch(torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3]))
    task.step(batch, state)["loss"].backward()
    assert model.norms1[0].weight.grad is None  # layer 0 belongs to module 0
    assert model.norms1[1].weight.grad.abs().sum() > 0
    assert model.attn.qkv.weight.grad.abs().sum() > 0  # the shared block learns from pair 1


def test_training_lowers_the_module_loss_resumes_bit_exact_and_assembles(
    tmp_path, vit_teacher_run, data
):
    args = {"teacher": str(vit_teacher_run), "num_modules": 2, "alpha": 1.0}
    recipe = RECIPE.replace(task="m2mkd", task_args=args, checkpoint_every_steps=1)
    model = _student()
    task, state = _setup(args, model, data)
    before = validate(task, model, data.val, RECIPE, state)["distill"]
    res = fit(model, data, recipe, tmp_path / "full", progress=False)
    assert res.status == "completed" and res.monitor == "val_distill"
    assert res.history[-1]["val_distill"] < before

    # stopped inside the second epoch (2 steps per epoch)
    a, _ = assert_resumes_bit_exact(
        _student, data, recipe, tmp_path / "full", tmp_path / "cut", stop_step=3
    )
    assert any("stitch" in k for k in a)
    # the end-to-end phase: the distilled modules are the student; stitches stay behind
    student = _student()
    load_checkpoint(tmp_path / "full" / "checkpoints" / "last.safetensors", student)
    assert torch.equal(student.blocks[1].mlp.router.weight, model.blocks[1].mlp.router.weight)
    e2e = fit(student, data, RECIPE.replace(epochs=1), tmp_path / "e2e", progress=False)
    assert e2e.status == "completed"


def test_a_separate_meta_model_hosts_both_modules(tmp_path, vit_teacher_run, data):
    # a two-block meta model of the teacher's width, on the teacher's data (one epoch)
    meta_dir = tmp_path / "meta"
    meta_dir.mkdir()
    info = json.loads((vit_teacher_run / "model.json").read_text())
    kwargs = {**info["kwargs"], "depth": 2}
    (meta_dir / "model.json").write_text(json.dumps({**info, "kwargs": kwargs}))
    torch.manual_seed(0)
    fit(
        create_model("vit_pico", **kwargs),
        load_dataset(SPEC, seed=0),
        RECIPE.replace(epochs=1),
        meta_dir,
        progress=False,
    )
    model = _student()
    args = {"teacher": str(vit_teacher_run), "meta": str(meta_dir), "num_modules": 2}
    task, state = _setup(args, model, data)
    assert task.spans["meta model"] == [(0, 1), (1, 2)]
    x = torch.zeros(2, 3, 16, 16)
    with torch.no_grad():
        h = task.frozen["meta"].forward_intermediates(x, [0])[0]
        # teacher module 1 (blocks 3-5 with the teacher's head) on the meta model's block 0
        z1 = task._teacher_hybrid(x, 1, h)
        teacher = task.frozen["teacher"]
        torch.testing.assert_close(z1, run_blocks(teacher, x, 2, h))
        # teacher module 0 (its blocks 0-2) followed by the meta model's block 1 and head
        t2 = teacher.forward_intermediates(x, [2])[0]
        torch.testing.assert_close(
            task._teacher_hybrid(x, 0, None), run_blocks(task.frozen["meta"], x, 0, t2)
        )
    assert validate(task, model, data.val, RECIPE, state)["distill"] > 0
    other = tmp_path / "other"  # the same meta model, recorded as trained on other data
    (other / "checkpoints").mkdir(parents=True)
    (other / "model.json").write_text((meta_dir / "model.json").read_text())
    recorded = read_checkpoint_meta(meta_dir / "checkpoints" / "best.safetensors")
    recorded["data"] = {**recorded["data"], "spec": SMALL}
    save_checkpoint(other / "checkpoints" / "best.safetensors", task.frozen["meta"], meta=recorded)
    with pytest.raises(ValueError, match="trained on other data than the teacher"):
        _setup({**args, "meta": str(other)}, _student(), data)


def test_bad_inputs_fail_before_training(tmp_path, teacher_run, vit_teacher_run, data):
    with pytest.raises(ValueError, match="teacher into modules .* resnet_pico is hierarchical"):
        fit(
            _student(),
            data,
            RECIPE.replace(task="m2mkd", task_args={"teacher": str(teacher_run)}),
            tmp_path / "a",
            progress=False,
        )
    assert not (tmp_path / "a" / "checkpoints" / "last.safetensors").exists()
    args = {"teacher": str(vit_teacher_run), "num_modules": 2}
    with pytest.raises(ValueError, match="gives 65 tokens per image and the meta model .* 17"):
        _setup(args, _student(patch_size=2), data)
    with pytest.raises(ValueError, match="student has 2 blocks, fewer than num_modules=4"):
        _setup({**args, "num_modules": 4}, _student(), data)
    with pytest.raises(
        ValueError, match="splits the student into modules.* ResNet is hierarchical"
    ):
        _setup(args, create_model("resnet_pico", num_classes=4, img_size=16), data)
    with pytest.raises(ValueError, match="module must be -1"):
        create_task("m2mkd", {**args, "module": 2})
    with pytest.raises(ValueError, match="cannot be cached"):
        create_task("m2mkd", {**args, "meta": "x", "cache": str(tmp_path)})
