"""Each method, pretrained briefly on an embedded set with labels hidden, gives a linear
probe above the same backbone at random initialization; the semi-supervised stages of
SimCLR v2 use the labels they should and no others."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from archbench.data import load_dataset
from archbench.models import create_model
from archbench.ssl.probe import probe
from archbench.train import create_task, fit, load_recipe
from archbench.train.tasks import Batch

SHAPES = "shapes:num_classes=5,n_train=512,n_val=64,n_test=256,img_size=16"
# rotations of the shapes set carry no signal (its objects are drawn at every angle);
# handwritten digits have an upright orientation to predict
DIGITS = "digits:img_size=16,test_frac=0.6"
MODEL = "resnet_pico"

METHODS = [
    # on the shapes set SimCLR v2 ended above random init on an AMD CPU and 0.01 below it
    # on an Intel one (3 epochs); on the digits it is 0.05 above
    ("simclr_v2", {"temperature": 0.2}, DIGITS),
    ("g_simclr", {"temperature": 0.2, "clusters": 5, "ae_steps": 30}, SHAPES),
    ("swav", {"prototypes": 20, "small_size": 8}, SHAPES),
    ("rotnet", {}, DIGITS),
]
# the other methods at sizes that train in seconds on 16x16 images
OTHERS = [
    ("obow", {"num_words": 64, "patches": 0}, SHAPES),
    ("gedi", {"clusters": 5, "sgld_steps": 5, "buffer_size": 512}, SHAPES),
    ("sp2ot", {"clusters": 5}, SHAPES),
    # on the 256 shapes test images these two ended within noise of random init on one
    # CPU and above it on another; on the 1078 digits test images they are clearly above
    ("clusterfit", {"clusters": 10}, DIGITS),
    ("spark", {}, DIGITS),
    ("nat", {"dim": 32}, DIGITS),
    ("context_prediction", {"patch": 4, "gap": 1, "jitter": 0, "hidden": 64}, DIGITS),
    ("selfie", {"grid": 4, "masked": 4, "depth": 1}, DIGITS),
]

_data: dict[str, object] = {}


def _load(spec):
    if spec not in _data:
        _data[spec] = load_dataset(spec, seed=0)
    return _data[spec]


def _model(data):
    torch.manual_seed(0)
    return create_model(
        MODEL, num_classes=data.num_classes, in_chans=data.in_chans, img_size=data.img_size
    )


def _linear(model, data):
    return probe(model, data, kind="linear", weight_decays=(1e-4, 1e-2))["linear"]["acc"]


def _recipe(method, args, epochs=3):
    return load_recipe("cpu-fast").replace(
        epochs=epochs,
        batch_size=64,
        warmup_epochs=0,
        lr=5e-3,
        seed=0,
        task=method,
        task_args=args,
    )


@pytest.fixture(scope="module")
def random_init():
    """Linear-probe accuracy of the randomly initialized backbone, per dataset."""
    return {spec: _linear(_model(_load(spec)), _load(spec)) for spec in (SHAPES, DIGITS)}


@pytest.mark.parametrize(
    "method, args, spec", METHODS + OTHERS, ids=[m[0] for m in METHODS + OTHERS]
)
def test_pretraining_beats_random_init(method, args, spec, random_init, tmp_path):
    data = _load(spec)
    model = _model(data)
    task = create_task(method, args)
    task.check(model, data)
    seen = []
    real = task.step

    def spy(batch, state):  # every batch the method sees during training
        seen.append((batch.labels, batch.targets))
        return real(batch, state)

    task.step = spy
    res = fit(model, data, _recipe(method, args), tmp_path / "run", task=task, progress=False)
    assert res.status == "completed"
    assert seen and all(lab is None and tgt is None for lab, tgt in seen)
    acc = _linear(model, data)
    assert acc > random_init[spec] + 0.01, (method, acc, random_init[spec])


def test_label_free_tasks_refuse_labels():
    task = create_task("simclr_v2")
    raw = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    batch = Batch(
        views=[raw.float()],
        targets=None,
        labels=torch.zeros(2, dtype=torch.long),
        index=torch.arange(2),
        raw=raw,
    )
    with pytest.raises(RuntimeError, match="received labels"):
        task.raw_images(batch)


def test_finetune_trains_on_the_labelled_fraction_only(tmp_path):
    data = _load(SHAPES)
    task = create_task("simclr_v2_finetune", {"label_fraction": 0.1})
    model = _model(data)
    task.setup(model, data, _recipe("simclr_v2_finetune", {}))
    labelled = task.labelled
    assert labelled.sum().item() == pytest.approx(0.1 * len(data.train), abs=data.num_classes)
    # class-balanced: every class has its share
    counts = torch.bincount(data.train.labels[labelled], minlength=data.num_classes)
    assert counts.min() >= 0.08 * len(data.train) / data.num_classes
    idx = torch.arange(64)
    x = data.train.images[idx].float() / 255
    y = data.train.labels[idx]
    batch = Batch(views=[x], targets=F.one_hot(y, data.num_classes).float(), labels=y, index=idx)
    state = type("S", (), {"model": model})()
    out = task.step(batch, state)
    keep = labelled[idx]
    expected = F.cross_entropy(model(x)[keep], y[keep])
    torch.testing.assert_close(out["loss"], expected)


def test_finetune_loads_the_encoder_and_distill_matches_the_formula(tmp_path):
    data = _load(SHAPES)
    pre = tmp_path / "pre"
    model = _model(data)
    r = _recipe("rotnet", {}, epochs=1).replace(total_steps=1)
    fit(model, data, r, pre, progress=False)
    (pre / "model.json").write_text(
        json.dumps(
            {
                "model": MODEL,
                "data": SHAPES,
                "data_seed": 0,
                "kwargs": {"num_classes": 5, "in_chans": 3, "img_size": 16},
            }
        )
    )
    student = _model(data)
    torch.manual_seed(1)
    student = create_model(MODEL, num_classes=5, in_chans=3, img_size=16)
    task = create_task("simclr_v2_finetune", {"init": str(pre)})
    task.check(student, data)
    task.setup(student, data, _recipe("simclr_v2_finetune", {}))
    trained = model.state_dict()
    for k, v in student.state_dict().items():
        if not k.startswith("head."):
            assert torch.equal(v, trained[k]), k
    # distillation: the teacher is the run; the loss is CE(softmax(t/T), log_softmax(s/T))
    dist = create_task("simclr_v2_distill", {"teacher": str(pre), "temperature": 2.0})
    dist.check(student, data)
    dist.setup(student, data, _recipe("simclr_v2_distill", {}))
    x = data.train.images[:8].float() / 255
    batch = Batch(
        views=[x], targets=None, labels=None, index=torch.arange(8), raw=data.train.images[:8]
    )
    state = type("S", (), {"model": student})()
    out = dist.step(batch, state)
    with torch.no_grad():
        t, s = model.eval()(x), student(x)
    expected = -(F.softmax(t / 2, -1) * F.log_softmax(s / 2, -1)).sum(-1).mean()
    torch.testing.assert_close(out["loss"].detach(), expected)


@pytest.mark.parametrize("method, args, spec", METHODS, ids=[m[0] for m in METHODS])
def test_every_method_trains_a_vit(method, args, spec, tmp_path):
    """One step on a token model: the methods take any registered backbone."""
    data = load_dataset("shapes:n_train=32,n_val=8,n_test=8,img_size=16,num_classes=4", seed=0)
    torch.manual_seed(0)
    model = create_model("vit_pico", num_classes=4, img_size=16)
    args = {**args, "ae_steps": 2} if method == "g_simclr" else args
    if method == "swav":  # a ViT takes one input size: no small crops (the check says so)
        with pytest.raises(ValueError, match="small_crops=0"):
            create_task(method, args).check(model, data)
        args = {**args, "small_crops": 0}
    task = create_task(method, args)
    task.check(model, data)
    recipe = _recipe(method, args, epochs=1).replace(batch_size=16, total_steps=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = fit(model, data, recipe, tmp_path / "run", task=task, progress=False)
    assert res.status == "completed" and res.history[-1]["val_loss"] == res.history[-1]["val_loss"]
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("blocks.") for k in changed)
