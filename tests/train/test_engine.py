from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn
from safetensors import safe_open

from archbench.data import load_dataset
from archbench.models import create_model
from archbench.train import (
    EMA,
    ClassificationTask,
    Recipe,
    build_optimizer,
    evaluate,
    fit,
    load_checkpoint,
    param_groups,
    register_task,
    save_checkpoint,
)

SPEC = "shapes:n_train=64,n_val=16,n_test=16,img_size=16,num_classes=4"
FAST = Recipe(epochs=2, batch_size=16, lr=3e-3, warmup_epochs=0.5)


@pytest.fixture(scope="module")
def data():
    return load_dataset(SPEC, seed=0)


def _model(**kw):
    torch.manual_seed(0)
    return create_model("resnet_pico", num_classes=4, img_size=16, **kw)


def test_fit_writes_metrics_and_checkpoints(tmp_path, data):
    res = fit(_model(), data, FAST, tmp_path, progress=False)
    assert res.status == "completed" and res.epochs_completed == 2 and res.steps == 8
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    for key in (
        "train_loss",
        "train_acc",
        "val_loss",
        "val_top1",
        "val_top5",
        "lr",
        "epoch_time_s",
    ):
        assert key in lines[0]
    assert res.best_val_top1 == max(r["val_top1"] for r in lines)
    assert res.final_val["top1"] == lines[-1]["val_top1"]
    assert res.images_per_s > 0 and 0 <= res.data_time_share < 1
    best = load_checkpoint(res.best_checkpoint, _model())
    assert best["meta"]["epoch"] == res.best_epoch
    assert Recipe.from_file(tmp_path / "recipe.yaml") == FAST.for_data(data)  # as resolved
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave no temporaries
    again = fit(_model(), data, FAST, tmp_path, progress=False)  # finished: nothing to do
    assert again.status == "completed" and again.steps == 8 and len(again.history) == 2
    with pytest.raises(ValueError, match="different recipe"):
        fit(_model(), data, FAST.replace(lr=1e-3), tmp_path)


def test_wrong_channels_fail_before_training(tmp_path, data):
    with pytest.raises(ValueError, match="in_chans=1 but dataset .* has 3 channel"):
        fit(_model(in_chans=1), data, FAST, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="num_classes=7 .* 4 classes"):
        fit(create_model("resnet_pico", num_classes=7, img_size=16), data, FAST, tmp_path / "run")


@register_task("test_nan_after")
class NanAfter(ClassificationTask):
    """Classification whose loss turns NaN from a given step on."""

    def __init__(self, step: int = 5):
        super().__init__()
        self.after, self.calls = step, 0

    def step(self, batch, state):
        out = super().step(batch, state)
        self.calls += 1
        bomb = out["loss"] * (float("nan") if self.calls > self.after else 0.0)
        out["bomb"] = bomb.detach()
        out["loss"] = out["loss"] + bomb
        return out


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, data):
    model = _model()
    recipe = FAST.replace(task="test_nan_after", task_args={"step": 5})
    res = fit(model, data, recipe, tmp_path, progress=False)
    assert res.status == "failed_nan" and "nan" in res.error and "epoch 2" in res.error
    assert res.epochs_completed == 1 and len(res.history) == 1
    kept = load_checkpoint(res.last_checkpoint, _model())
    assert kept["meta"]["state"]["epoch"] == 1
    assert all(
        torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point()
    )
    assert "train_bomb" in res.history[0]


def test_time_budget_stops_cleanly_then_resumes(tmp_path, data):
    res = fit(_model(), data, FAST, tmp_path, max_seconds=1e-6, progress=False)
    assert res.status == "stopped_time" and res.steps == 1 and res.final_val is not None
    more = fit(_model(), data, FAST, tmp_path, progress=False)
    assert more.status == "completed" and more.steps == 8


def test_weight_decay_groups_skip_norms_biases_and_listed_names():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.norm = nn.BatchNorm2d(4)
            self.pos_embed = nn.Parameter(torch.zeros(1, 4, 2, 2))

        def no_weight_decay(self):
            return {"pos_embed"}

    m = M()
    decay, no_decay = param_groups(m, 0.1)
    assert decay["params"] == [m.conv.weight] and decay["weight_decay"] == 0.1
    names = {id(p) for p in no_decay["params"]}
    assert names == {id(m.conv.bias), id(m.norm.weight), id(m.norm.bias), id(m.pos_embed)}
    assert no_decay["weight_decay"] == 0.0
    opt = build_optimizer(m, Recipe(optimizer="sgd", momentum=0.9, nesterov=True))
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["nesterov"]


def test_checkpoint_round_trip_without_pickle(tmp_path):
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    opt = torch.optim.AdamW(m.parameters(), lr=0.1, betas=(0.8, 0.9))
    m(torch.randn(5, 3)).sum().backward()
    opt.step()
    rng = torch.get_rng_state()
    path = save_checkpoint(
        tmp_path / "c.safetensors", m, opt, extra_tensors={"rng": rng}, meta={"epoch": 3}
    )
    with safe_open(str(path), framework="pt") as f:  # a plain safetensors file
        assert "model/0.weight" in f.keys() and f.metadata()["archbench"].startswith("archbench")
    m2 = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    opt2 = torch.optim.AdamW(m2.parameters(), lr=0.5)
    out = load_checkpoint(path, m2, opt2)
    assert out["meta"] == {"epoch": 3} and torch.equal(out["extra"]["rng"], rng)
    assert torch.equal(m2[0].weight, m[0].weight)
    assert opt2.param_groups[0]["betas"] == (0.8, 0.9) and opt2.param_groups[0]["lr"] == 0.1
    s1, s2 = opt.state_dict()["state"][0], opt2.state_dict()["state"][0]
    assert torch.equal(s1["exp_avg"], s2["exp_avg"]) and torch.equal(s1["step"], s2["step"])
    with pytest.raises(ValueError, match="does not match the model"):
        load_checkpoint(path, nn.Linear(3, 4))
    (tmp_path / "junk.safetensors").write_bytes(b"\x80\x04junk")
    with pytest.raises(ValueError, match="not a .*safetensors"):
        load_checkpoint(tmp_path / "junk.safetensors", m2)


def test_evaluate_top1_top5_and_ema():
    class Fixed(nn.Module):
        def forward(self, x):
            # class scores: 0 > 1 > ... > 6 for every image
            return torch.arange(7.0, 0, -1).expand(x.shape[0], 7).clone()

    x = torch.zeros(4, 1, 2, 2)
    y = torch.tensor([0, 1, 4, 6])
    m = evaluate(Fixed(), [(x, y)])
    assert (m["top1"], m["top5"], m["n"]) == (0.25, 0.75, 4)
    lin = nn.Linear(2, 2)
    ema = EMA(decay=0.0, warmup=False, evaluate=False)

    class S:
        model = lin

    ema.on_fit_start(S)
    with torch.no_grad():
        lin.weight.add_(1.0)
    ema.on_step_end(S)
    assert torch.equal(ema.model.weight, lin.weight)
    sd = ema.state_dict()
    assert int(sd["updates"]) == 1


def test_bf16_autocast_and_sgd_run(tmp_path, data):
    recipe = FAST.replace(epochs=1, precision="bf16", optimizer="sgd", lr=0.05, grad_clip=1.0)
    res = fit(_model(), data, recipe, tmp_path, progress=False)
    assert res.status == "completed" and math.isfinite(res.history[0]["train_loss"])


def test_model_aux_loss_is_added_to_the_task_loss(tmp_path):
    """Families with an auxiliary objective expose it through ImageClassifier.aux_loss."""
    torch.manual_seed(0)
    data = load_dataset("shapes:n_train=64,n_val=32,n_test=32", seed=0)
    model = create_model("widenet_pico", num_classes=data.num_classes)
    calls = []
    original = model.aux_loss

    def spy(targets):
        value = original(targets)
        calls.append(float(value.detach()))
        return value

    model.aux_loss = spy
    res = fit(model, data, FAST.replace(epochs=1, batch_size=32), tmp_path, progress=False)
    assert len(calls) == 2 and all(c > 0 for c in calls)  # one per step: 64 images, batch 32
    rec = res.history[0]
    assert rec["train_aux_loss"] == pytest.approx(sum(calls) / 2)
    assert rec["train_loss"] == pytest.approx(rec["train_ce"] + rec["train_aux_loss"])
