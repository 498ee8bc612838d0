"""Training tasks and hooks: techniques plug into fit without forking the loop."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

from archbench.cli import main
from archbench.data import load_dataset
from archbench.data.transforms import normalize
from archbench.models import create_model
from archbench.train import (
    Callback,
    ClassificationTask,
    Recipe,
    Task,
    create_task,
    fit,
    list_tasks,
    register_task,
)

SPEC = "shapes:n_train=64,n_val=16,n_test=16,img_size=16,num_classes=4"
FAST = Recipe(epochs=1, batch_size=16, lr=3e-3, warmup_epochs=0.0)


@pytest.fixture(scope="module")
def data():
    return load_dataset(SPEC, seed=0)


def _model(name="resnet_pico", **kw):
    torch.manual_seed(0)
    return create_model(name, num_classes=4, img_size=16, **kw)


@register_task("test_two_view")
class TwoViewTask(Task):
    """Label-free: two views of each image, a projector added in setup, a cosine loss."""

    views = 2
    uses_labels = False
    monitor = ("val_loss", "min")
    initial: dict[str, torch.Tensor] = {}
    seen: list[dict] = []

    def __init__(self, dim: int = 8):
        super().__init__()
        self.dim = dim

    def setup(self, model, data, recipe):
        self.trainable["projector"] = nn.Linear(model.num_features, self.dim)
        TwoViewTask.initial = {
            k: v.clone() for k, v in self.trainable["projector"].state_dict().items()
        }

    def embed(self, model, x):
        feats = model.forward_head(model.forward_features(x), pre_logits=True)
        return F.normalize(self.trainable["projector"](feats), dim=-1)

    def step(self, batch, state):
        TwoViewTask.seen.append(
            dict(
                labels=batch.labels,
                targets=batch.targets,
                views=[v.clone() for v in batch.views],
                index=batch.index.clone(),
                raw=batch.raw.clone(),
            )
        )
        z1, z2 = (self.embed(state.model, v) for v in batch.views)
        return {"loss": 2 - 2 * (z1 * z2).sum(-1).mean()}


def test_two_view_task_without_labels_trains_through_fit(tmp_path, data):
    TwoViewTask.seen.clear()
    task = create_task("test_two_view", {"dim": 8})
    recipe = FAST.replace(task="test_two_view", task_args={"dim": 8}, hflip=0.5, crop="pad")
    res = fit(_model(), data, recipe, tmp_path, task=task, progress=False)
    assert res.status == "completed" and res.steps == 4
    assert res.monitor == "val_loss" and res.best_metric == res.history[0]["val_loss"]
    assert res.best_val_top1 is None and "train_acc" not in res.history[0]
    after = task.trainable["projector"].state_dict()
    assert not torch.equal(after["weight"], TwoViewTask.initial["weight"])
    # the batches: no labels, two views drawn independently, indices point at the raw images
    first = TwoViewTask.seen[0]
    assert first["labels"] is None and first["targets"] is None
    assert len(first["views"]) == 2 and not torch.equal(*first["views"])
    assert torch.equal(first["raw"], data.train.images[first["index"]])
    train_index = torch.cat([b["index"] for b in TwoViewTask.seen[:4]])  # then validation
    assert sorted(train_index.tolist()) == list(range(64))  # one epoch sees each sample once
    val = TwoViewTask.seen[4]  # validation: the same unaugmented image in every view
    assert torch.equal(val["views"][0], val["views"][1]) and val["labels"] is None
    ck = load_file(tmp_path / "checkpoints" / "last.safetensors")
    assert torch.equal(ck["extra/task/trainable.projector.weight"], after["weight"])


def test_views_without_augmentation_are_the_normalized_images(tmp_path, data):
    TwoViewTask.seen.clear()
    recipe = FAST.replace(task="test_two_view", crop="none", hflip=0.0, epochs=1)
    fit(_model(), data, recipe, tmp_path, progress=False)
    batch = TwoViewTask.seen[0]
    expected = normalize(
        batch["raw"].float() / 255.0, torch.tensor(data.mean), torch.tensor(data.std)
    )
    for view in batch["views"]:
        torch.testing.assert_close(view, expected)


def test_task_trains_through_the_cli(tmp_path):
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "resnet_pico",
            "--data",
            SPEC,
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--task",
            "test_two_view",
            "--task-arg",
            "dim=6",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    recipe = Recipe.from_file(out / "recipe.yaml")
    assert recipe.task == "test_two_view" and recipe.task_args == {"dim": 6}
    ck = load_file(out / "checkpoints" / "last.safetensors")
    weight = ck["extra/task/trainable.projector.weight"]
    assert weight.shape[0] == 6 and not torch.equal(weight, TwoViewTask.initial["weight"])
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert "val_loss" in record and "val_top1" not in record


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--task", "nosuchtask"], "unknown task 'nosuchtask'; registered tasks: .*classification"),
        (["--task", "test_two_view", "--task-arg", "dims=3"], "accepted: dim"),
        (["--task-arg", "temperature=4"], "no argument.*temperature; accepted: none"),
    ],
)
def test_bad_task_options_fail_before_training(tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    code = main(["train", "resnet_pico", "--data", SPEC, "--out", str(out), *argv])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    import re

    assert re.search(message, err), err
    assert not (out / "checkpoints").exists()


class SwapHead(ClassificationTask):
    """Replaces the model's classifier in setup, keeping the old one to check it is idle."""

    def setup(self, model, data, recipe):
        self.old_head = model.head
        self.old_weight = model.head.weight.detach().clone()
        model.head = nn.Linear(model.num_features, data.num_classes)
        self.new_weight = model.head.weight.detach().clone()


register_task("test_swap_head")(SwapHead)


class SwapHeadOnFitStart(Callback):
    def on_fit_start(self, state):
        self.new = nn.Linear(state.model.num_features, 4)
        self.initial = self.new.weight.detach().clone()
        state.model.head = self.new
        self.optimizer_seen = state.optimizer


def test_modules_swapped_before_the_optimizer_are_the_ones_trained(tmp_path, data):
    model = _model()
    task = create_task("test_swap_head")
    fit(model, data, FAST.replace(task="test_swap_head"), tmp_path / "a", task=task, progress=False)
    assert model.head is not task.old_head
    assert torch.equal(task.old_head.weight, task.old_weight)  # the replaced head is idle
    assert not torch.equal(model.head.weight, task.new_weight)  # the new one trained
    cb = SwapHeadOnFitStart()
    model = _model()
    fit(model, data, FAST, tmp_path / "b", callbacks=[cb], progress=False)
    assert cb.optimizer_seen is None  # on_fit_start runs before the optimizer exists
    assert model.head is cb.new and not torch.equal(cb.new.weight, cb.initial)


HOOKS = (
    "on_fit_start",
    "on_epoch_start",
    "on_train_batch_start",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_step_end",
    "on_epoch_end",
    "on_fit_end",
)


class Recorder:
    def __init__(self, name, log):
        self.name, self.log = name, log
        for hook in HOOKS:
            setattr(self, hook, self._make(hook))

    def _make(self, hook):
        def record(state, *args):
            info = ""
            weight = state.model.head.weight
            if hook == "on_after_backward":
                info = "grad" if weight.grad is not None else "nograd"
                self.snapshot = weight.detach().clone()
            if hook == "on_before_optimizer_step":
                norm = torch.cat([p.grad.flatten() for p in state.model.parameters()]).norm()
                same = torch.equal(weight, self.snapshot)
                info = f"clipped={bool(norm <= 1.0 + 1e-5)},stepped={not same}"
            if hook == "on_step_end":
                info = f"stepped={not torch.equal(weight, self.snapshot)}"
            self.log.append((self.name, hook, info))

        return record


@register_task("test_recorded")
class RecordedTask(ClassificationTask):
    log: list = []

    def step(self, batch, state):
        RecordedTask.log.append(("task", "step", ""))
        return super().step(batch, state)


def test_hooks_run_in_the_documented_order(tmp_path, data):
    log = RecordedTask.log
    log.clear()
    task = create_task("test_recorded")
    task_recorder = Recorder("task", log)
    for hook in HOOKS:  # the task's own hooks run before the callbacks'
        setattr(task, hook, getattr(task_recorder, hook))
    recipe = FAST.replace(task="test_recorded", grad_clip=1.0, batch_size=32)  # 2 steps
    fit(
        _model(), data, recipe, tmp_path, task=task, callbacks=[Recorder("cb", log)], progress=False
    )
    calls = [(who, hook) for who, hook, _ in log]
    step = [
        "on_train_batch_start",
        "step",
        "on_before_backward",
        "on_after_backward",
        "on_before_optimizer_step",
        "on_step_end",
    ]
    expected_hooks = ["on_fit_start", "on_epoch_start", *step, *step, "on_epoch_end", "on_fit_end"]
    expected = []
    for hook in expected_hooks:
        expected += [("task", "step")] if hook == "step" else [("task", hook), ("cb", hook)]
    assert calls == expected
    infos = {(who, hook): info for who, hook, info in log}
    assert infos["cb", "on_after_backward"] == "grad"
    assert infos["cb", "on_before_optimizer_step"] == "clipped=True,stepped=False"
    assert infos["cb", "on_step_end"] == "stepped=True"


def test_deit_distilled_heads_train_without_a_teacher(tmp_path, data):
    model = _model("deit_pico_distilled")
    model.set_distilled_training(True)
    before = {k: v.clone() for k, v in model.state_dict().items() if "head" in k}
    res = fit(model, data, FAST, tmp_path, progress=False)
    assert res.status == "completed"
    for k, v in model.state_dict().items():
        if k in before:
            assert not torch.equal(v, before[k]), f"{k} did not train"


def test_task_registry_and_contract_errors():
    assert {"classification", "test_two_view"} <= set(list_tasks())
    with pytest.raises(ValueError, match="needs argument"):

        @register_task("test_required")
        class Required(ClassificationTask):
            def __init__(self, teacher: str):
                super().__init__()

        create_task("test_required")
    with pytest.raises(ValueError, match="already registered"):
        register_task("classification")(SwapHead)
    with pytest.raises(TypeError, match="Task subclass"):
        register_task("test_not_a_task")(object)

    @register_task("test_bad_step")
    class BadStep(ClassificationTask):
        def step(self, batch, state):
            return super().step(batch, state)["loss"]

    with pytest.raises(ValueError, match="recipe names 'classification'"):
        fit(_model(), load_dataset(SPEC, seed=0), FAST, "/nonexistent/x", task=BadStep())
