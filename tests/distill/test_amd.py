"""AMD (``amd_distill`` and task ``amd_step``): the step loss and the NPSD criterion by
hand, the search, width scaling, training and resume, a tiny chain, and bad inputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from _checks import RECIPE, assert_resumes_bit_exact, make_student, validate_before_training

from archbench.data import load_dataset
from archbench.distill import load_teacher
from archbench.distill.amd import (
    _grid_multipliers,
    _params,
    amd_distill,
    amd_step_loss,
    npsd,
    scale_widths,
    search_assistant,
)
from archbench.train import create_task, fit

# the students train on a smaller split of the teachers' task (the teachers saw n_train=64)
SMALL = "shapes:n_train=32,n_val=16,n_test=16,img_size=16,num_classes=4"


@pytest.fixture(scope="module")
def data():
    return load_dataset(SMALL, seed=0)


def _student(name="allconv_pico"):
    return make_student(name)


def test_amd_step_loss_by_hand():
    s = np.array([[1.0, -0.5, 2.0, 0.0], [0.1, 0.2, -1.0, 0.7]])
    t = np.array([[0.5, 0.0, 3.0, -1.0], [2.0, -1.0, 0.0, 0.3]])
    y = np.array([[0.0, 0.0, 1.0, 0.0], [0.1, 0.7, 0.1, 0.1]])
    f_s = np.array([[0.5, -1.0, 2.0], [0.0, 1.0, 1.0]])
    f_t = np.array([[1.0, -1.0, 0.0], [0.5, 0.5, 2.0]])
    temp, alpha, beta = 3.0, 0.4, 0.7

    def log_softmax(z):
        z = z - z.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))

    ce = -(y * log_softmax(s)).sum(1).mean()
    lp_s, lp_t = log_softmax(s / temp), log_softmax(t / temp)
    kd = temp**2 * (np.exp(lp_t) * (lp_t - lp_s)).sum(1).mean()
    feat = ((f_s - f_t) ** 2).mean()
    got = amd_step_loss(*map(torch.tensor, (s, t, f_s, f_t, y)), temp, alpha, beta)
    assert float(got["ce"]) == pytest.approx(ce, rel=1e-6)
    assert float(got["kd"]) == pytest.approx(kd, rel=1e-6)
    assert float(got["feat"]) == pytest.approx(feat, rel=1e-6)
    assert float(got["loss"]) == pytest.approx(
        (1 - alpha) * ce + alpha * kd + beta * feat, rel=1e-6
    )


def test_npsd_picks_the_most_performance_per_parameter_above_the_student():
    scales = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]  # millions of parameters
    perf = [0.41, 0.44, 0.52, 0.71, 0.73, 0.74, 0.75, 0.755, 0.76]  # flat from 0.4M up
    p_s, s_s = 0.40, 0.05
    by_hand = [(p - p_s) / (s - s_s) for p, s in zip(perf, scales)]
    assert npsd(0.71, 0.4, p_s, s_s) == pytest.approx(0.31 / 0.35)
    assert int(np.argmax(by_hand)) == 3  # 0.4M: not the best candidate (0.9M), the knee
    probed = []

    def probe(i):
        probed.append(i)
        return perf[i]

    best, values = search_assistant(scales, probe, p_s, s_s, "exhaustive")
    assert best == 3 and sorted(probed) == list(range(9))
    for i, v in values.items():
        assert v == pytest.approx(by_hand[i])
    probed.clear()
    best, values = search_assistant(scales, probe, p_s, s_s, "ternary")
    assert best == 3 and len(probed) < len(scales) and len(set(probed)) == len(probed)
    # ties go to the smaller assistant; a candidate no larger than the student is refused
    assert search_assistant([0.2, 0.4], lambda i: [0.5, 0.6][i], 0.4, 0.1)[0] == 0
    with pytest.raises(ValueError, match="must exceed the student's"):
        npsd(0.5, 0.1, 0.4, 0.1)


def test_ternary_search_finds_the_exhaustive_choice_on_s_shaped_curves():
    rng = np.random.default_rng(0)
    scales = [0.1 * k for k in range(1, 13)]
    for _ in range(200):
        c, w = rng.uniform(0.1, 1.2), rng.uniform(0.03, 0.4)
        lo, hi = rng.uniform(0.2, 0.5), rng.uniform(0.6, 0.95)

        def curve(s, c=c, w=w, lo=lo, hi=hi):
            return lo + (hi - lo) / (1 + math.exp(-(s - c) / w))

        probed = []

        def probe(i, curve=curve, probed=probed):
            probed.append(i)
            return curve(scales[i])

        best, _ = search_assistant(scales, probe, curve(0.05), 0.05, "ternary")
        assert len(probed) <= 7  # of 12
        assert best == search_assistant(scales, probe, curve(0.05), 0.05, "exhaustive")[0]


def test_scale_widths_multiplies_the_declared_widths():
    kw = scale_widths("resnet_pico", 0.5, {"num_classes": 4, "img_size": 16})
    assert kw == {"num_classes": 4, "img_size": 16, "widths": (8, 16, 32, 64), "stem_width": 8}
    assert scale_widths("vit_pico", 0.75)["embed_dim"] == 96
    assert scale_widths("resnet_pico", 0.25)["widths"] == (8, 8, 16, 32)  # at least 8
    with pytest.raises(ValueError, match="width multiplier must be > 0"):
        scale_widths("resnet_pico", 0.0)
    # gridding: 4 parameter counts evenly spaced between 60k and 300k (108k, 156k, ...)
    base = {"num_classes": 4, "img_size": 16}
    grid = _grid_multipliers("resnet_pico", base, 60_000, 300_000, 4)
    sizes = [_params("resnet_pico", scale_widths("resnet_pico", m, base)) for m in grid]
    assert len(grid) == 4 and sizes == sorted(sizes)
    for k, n in enumerate(sizes, 1):
        assert abs(n - (60_000 + 48_000 * k)) < 24_000  # nearer its point than the next


def test_amd_step_lowers_the_distillation_loss_and_resumes_bit_exact(tmp_path, teacher_run, data):
    args = {"teacher": str(teacher_run)}
    recipe = RECIPE.replace(task="amd_step", task_args=args, checkpoint_every_steps=1)
    model = _student()
    task, before = validate_before_training("amd_step", args, model, data)
    assert isinstance(task.trainable["projector"], torch.nn.Linear)  # 64 -> 128 features
    res = fit(model, data, recipe, tmp_path / "full", progress=False)
    assert res.status == "completed"
    after = res.history[-1]
    assert after["val_kd"] + after["val_feat"] < before["kd"] + before["feat"]
    # stopped inside the second epoch (2 steps per epoch)
    a, _ = assert_resumes_bit_exact(
        _student, data, recipe, tmp_path / "full", tmp_path / "cut", stop_step=3
    )
    assert any("projector" in k for k in a)


def test_a_tiny_chain_records_its_choice(tmp_path, teacher_run):
    out = tmp_path / "amd"
    recipe = RECIPE.replace(epochs=1)
    rec = amd_distill(
        teacher_run, "regnet_pico", SMALL, recipe, out, candidates=(0.75, 0.5), data_seed=0
    )
    assert json.loads((out / "amd.json").read_text()) == json.loads(json.dumps(rec, default=str))
    (step,) = rec["steps"]
    s_s = rec["student"]["params"] / 1e6
    p_s = step["student_probe"]["val_top1"]
    assert [p["multiplier"] for p in step["probes"]] == [0.5, 0.75]  # sorted by size
    for p in step["probes"]:  # the recorded criterion is the formula on the recorded numbers
        assert p["npsd"] == pytest.approx((p["val_top1"] - p_s) / (p["params"] / 1e6 - s_s))
        assert s_s * 1e6 < p["params"] < rec["teacher"]["params"]
    best = max(step["probes"], key=lambda p: (p["npsd"], -p["params"]))
    assert step["chosen"]["multiplier"] == best["multiplier"]
    # the assistant is an ordinary run: a teacher for the next step, of the chosen size
    assistant, info = load_teacher(step["assistant"]["run"])
    assert sum(p.numel() for p in assistant.parameters()) == step["chosen"]["params"]
    assert info["model"] == "resnet_pico"
    final = rec["final"]
    assert final["teacher"] == step["assistant"]["run"] and final["model"] == "regnet_pico"
    assert json.loads((out / "step2_student" / "model.json").read_text())["model"] == "regnet_pico"
    assert (
        f"teacher: {step['assistant']['run']}"
        in (out / "step2_student" / "recipe.yaml").read_text()
    )
    assert rec["chain"] == [str(teacher_run), step["assistant"]["run"], final["run"]]
    # run again: every run is complete, so the same record comes back without training
    again = amd_distill(
        teacher_run, "regnet_pico", SMALL, recipe, out, candidates=(0.75, 0.5), data_seed=0
    )
    assert again == rec


def test_bad_inputs_fail_before_training(tmp_path, teacher_run):
    out = tmp_path / "amd"
    with pytest.raises(
        ValueError, match=r"candidate\(s\) x1.5 \(\d[\d,]*\) of resnet_pico are not"
    ):
        amd_distill(teacher_run, "regnet_pico", SMALL, RECIPE, out, candidates=(0.5, 1.5))
    with pytest.raises(ValueError, match="student vit_pico .* is not smaller than the teacher"):
        amd_distill(teacher_run, "vit_pico", SMALL, RECIPE, out, candidates=(0.5,))
    assert not out.exists()  # nothing trained, nothing written
    with pytest.raises(ValueError, match="search must be 'ternary' or 'exhaustive'"):
        amd_distill(teacher_run, "regnet_pico", SMALL, RECIPE, out, search="random")
    with pytest.raises(ValueError, match="feature_weight must be >= 0"):
        create_task("amd_step", {"teacher": str(teacher_run), "feature_weight": -1.0})
