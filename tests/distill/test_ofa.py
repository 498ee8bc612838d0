"""OFA-KD (task ``ofa``): the loss by hand, the branches, heterogeneous training and resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _checks import RECIPE, assert_resumes_bit_exact, make_student, validate_before_training

from archbench.distill.ofa import ConvBranch, TokenBranch, features_and_logits, ofa_loss
from archbench.models import create_model
from archbench.train import create_task, fit


def test_ofa_loss_by_hand():
    s = np.array([[1.0, -0.5, 2.0, 0.0], [0.1, 0.2, -1.0, 0.7]])
    t = np.array([[0.5, 0.0, 3.0, -1.0], [2.0, -1.0, 0.0, 0.3]])
    y = [2, 1]
    for eps, temp in ((1.0, 1.0), (1.5, 1.0), (0.8, 2.0)):
        total = 0.0
        for i in range(2):
            p_s = np.exp(s[i] / temp) / np.exp(s[i] / temp).sum()
            p_t = np.exp(t[i] / temp) / np.exp(t[i] / temp).sum()
            for c in range(4):
                w = (1 + p_t[c]) ** eps - 1 if c == y[i] else p_t[c] ** eps
                total -= w * np.log(p_s[c])
        got = ofa_loss(torch.tensor(s), torch.tensor(t), torch.tensor(y), eps, temp)
        assert float(got) == pytest.approx(total / 2, rel=1e-6)
    # eps = 1: the cross-entropy against the teacher's probabilities
    p_t = torch.softmax(torch.tensor(t), -1)
    ce = -(p_t * torch.log_softmax(torch.tensor(s), -1)).sum(-1).mean()
    assert float(ofa_loss(torch.tensor(s), torch.tensor(t), torch.tensor(y), 1.0)) == pytest.approx(
        float(ce)
    )


@pytest.mark.parametrize("name", ["resnet_pico", "vit_pico"])
def test_one_pass_features_equal_forward_intermediates(name):
    model = make_student(name).eval()
    x = torch.randn(2, 3, 16, 16)
    n = len(model.feature_info)
    with torch.no_grad():
        feats, logits = features_and_logits(model, x, [0, n - 1])
        ref = model.forward_intermediates(x, [0, n - 1])
        torch.testing.assert_close(logits, model(x))
    for a, b in zip(feats, ref):
        assert torch.equal(a, b)


def test_branch_shapes_follow_the_official_layout(teacher_run, data):
    task = create_task("ofa", {"teacher": str(teacher_run)})
    task.setup(make_student("resnet_pico"), data, RECIPE)
    # resnet_pico: 4 stages (16, 32, 64, 128 channels); pre-logit widths 128 and 128
    seps = [
        sum(type(m).__name__ == "SepConv" for m in task.trainable[f"stage{s}"].modules())
        for s in (1, 2, 3, 4)
    ]
    assert seps == [3, 2, 1, 0]
    assert isinstance(task.trainable["stage4"].blocks[0], torch.nn.Conv2d)
    vit = create_task("ofa", {"teacher": str(teacher_run), "stages": [1, 4]})
    vit.setup(make_student("vit_pico"), data, RECIPE)
    assert vit.positions == [0, 5]  # blocks 1 and 6 of 6 (2 and 12 of 12)
    assert [len(vit.trainable[k].blocks) for k in ("stage1", "stage4")] == [3, 1]
    # a 16 x 16 grid merges once, to 8 x 8; the class token feeds the classifier
    branch = TokenBranch(24, 32, (16, 16), 1, 2, 5)
    out = branch(torch.randn(3, 1, 24), torch.randn(3, 24, 16, 16))
    assert len(branch.merges) == 1 and out.shape == (3, 5)
    assert ConvBranch(8, 16, 2, 5)(torch.randn(2, 8, 5, 5)).shape == (2, 5)


@pytest.mark.parametrize(
    "teacher, student", [("teacher_run", "vit_pico"), ("vit_teacher_run", "resnet_pico")]
)
def test_heterogeneous_training_lowers_the_ofa_loss_and_resumes_bit_exact(
    request, tmp_path, data, teacher, student
):
    # the fixture teachers are barely trained (near-uniform outputs); T = 0.25 sharpens
    # them so that 8 steps move the student measurably towards them
    args = {"teacher": str(request.getfixturevalue(teacher)), "eps": 1.5, "temperature": 0.25}
    recipe = RECIPE.replace(task="ofa", task_args=args, checkpoint_every_steps=1, lr=1e-3)
    _, before = validate_before_training("ofa", args, make_student(student), data)
    res = fit(make_student(student), data, recipe, tmp_path / "full", progress=False)
    assert res.status == "completed"
    assert res.history[-1]["val_ofa"] < before["ofa"]

    # stopped inside the second epoch
    a, _ = assert_resumes_bit_exact(
        lambda: make_student(student),
        data,
        recipe,
        tmp_path / "full",
        tmp_path / "cut",
        stop_step=5,
    )
    assert any(k.startswith("extra/task/trainable.stage1") for k in a)


def test_bad_stages_and_eps_fail_before_training(tmp_path, data, teacher_run):
    def run(args):
        recipe = RECIPE.replace(task="ofa", task_args={"teacher": str(teacher_run), **args})
        fit(make_student("resnet_pico"), data, recipe, tmp_path / "bad", progress=False)

    with pytest.raises(
        ValueError, match=r"has 4 stages .*stages \[5\] do not exist.*within 1\.\.4"
    ):
        run({"stages": [2, 5]})
    with pytest.raises(ValueError, match=r"eps has 2 values.*\(3 in all\)"):
        run({"stages": [1, 2], "eps": [1.0, 1.5]})
    # a comparison checks every student on the meta device before anything trains
    with torch.device("meta"):
        vit = create_model("vit_pico", num_classes=4, img_size=16)
    with pytest.raises(ValueError, match=r"VisionTransformer has 4 stages \(isotropic"):
        create_task("ofa", {"teacher": str(teacher_run), "stages": [6]}).check_student(vit)
    with pytest.raises(ValueError, match="stages must be a list"):
        create_task("ofa", {"teacher": str(teacher_run), "stages": 3})
    assert not (tmp_path / "bad" / "checkpoints" / "last.safetensors").exists()
