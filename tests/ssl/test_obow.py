"""OBoW: BoW targets from a hand example, vocabulary updates, teacher momentum, predictor."""

from __future__ import annotations

import math
import types

import pytest
import torch
import torch.nn.functional as F

from archbench.data import load_dataset
from archbench.models import create_model
from archbench.ssl.obow import (
    BowPredictor,
    BowVocabulary,
    OBoW,
    bow_from_codes,
    soft_codes,
    squared_distances,
)
from archbench.train import create_task, fit, load_recipe


def test_bow_target_of_a_hand_example():
    # two words in 2-D, a 1x3 feature map; soft codes exp(-beta d) / sum, max-pooled, L1
    words = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    feats = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 1.0]])  # (positions, channels)
    fmap = feats.T.reshape(1, 2, 1, 3)
    beta = 0.5
    dist = squared_distances(fmap, words)
    by_hand_d = [[0.0, 4.0], [1.0, 1.0], [5.0, 1.0]]
    assert torch.allclose(dist[0, :, 0, :].T, torch.tensor(by_hand_d))
    codes = soft_codes(dist, beta)
    rows = []
    for d in by_hand_d:
        e = [math.exp(-beta * v) for v in d]
        rows.append([v / sum(e) for v in e])
    pooled = [max(r[k] for r in rows) for k in range(2)]
    expected = [p / sum(pooled) for p in pooled]
    assert torch.allclose(bow_from_codes(codes, "max")[0], torch.tensor(expected), atol=1e-6)
    avg = [sum(r[k] for r in rows) / 3 for k in range(2)]
    assert torch.allclose(bow_from_codes(codes, "avg")[0], torch.tensor(avg), atol=1e-6)
    with pytest.raises(ValueError, match="max"):
        bow_from_codes(codes, "sum")


def test_vocabulary_targets_update_and_queue():
    torch.manual_seed(0)
    vocab = BowVocabulary(num_words=6, channels=3, inv_delta=15.0)
    maps = torch.rand(4, 3, 5, 5)
    words_before = vocab.words.clone()
    bow = vocab(maps, update=True)
    # targets from the map without its border and the words before the update
    inner = maps[:, :, 1:-1, 1:-1]
    d = squared_distances(inner, words_before)
    mu = 0.99 * 0.5 + 0.01 * float(d.min(dim=1).values.mean())
    assert float(vocab.min_dist_mean) == pytest.approx(mu, rel=1e-5)
    codes = F.softmax(-(15.0 / mu) * d, dim=1)
    assert torch.allclose(bow, F.normalize(codes.flatten(2).amax(2), p=1, dim=1), atol=1e-5)
    assert torch.allclose(bow.sum(1), torch.ones(4))
    # one 3x3 local average of the inner map per image went into the queue
    local = F.avg_pool2d(inner, 3, stride=1).flatten(2)  # (4, 3, 1)
    assert torch.allclose(vocab.words[:4], local[:, :, 0], atol=1e-6)
    assert torch.equal(vocab.words[4:], words_before[4:])
    assert int(vocab.ptr) == 4
    vocab(maps, update=True)  # wraps around the 6-word queue
    assert int(vocab.ptr) == 2
    frozen = vocab.words.clone()
    vocab(maps, update=False)
    assert torch.equal(vocab.words, frozen) and int(vocab.ptr) == 2


def test_predictor_logits_are_kappa_cosines_to_generated_weights():
    torch.manual_seed(0)
    pred = BowPredictor([3, 5], feature_dim=4, kappa=8.0).eval()
    f = F.normalize(torch.randn(2, 4), dim=1)
    words = [torch.randn(7, 3), torch.randn(9, 5)]
    logits = pred(f, words)
    assert [tuple(lg.shape) for lg in logits] == [(2, 7), (2, 9)]
    w = F.normalize(pred.generators[0](F.normalize(words[0], dim=1)), dim=1)
    assert torch.allclose(logits[0], 8.0 * f @ w.T, atol=1e-6)
    assert logits[1].abs().max() <= 8.0 + 1e-5  # unit features: |kappa cos| <= kappa


def _task(**kw):
    data = load_dataset("shapes:n_train=16,n_val=8,n_test=8,img_size=16")
    model = create_model("resnet_pico", num_classes=data.num_classes, img_size=16)
    task = OBoW(num_words=16, patches=2, **kw)
    task.setup(model, data, load_recipe("cpu-fast").replace(epochs=2, batch_size=8))
    return model, data, task


def test_teacher_momentum_is_cosine_to_one_and_update_is_ema():
    model, data, task = _task(momentum=0.9)
    assert task.total_steps == 4
    assert task.teacher_momentum(0) == pytest.approx(0.9)
    assert task.teacher_momentum(2) == pytest.approx(0.95)
    assert task.teacher_momentum(4) == pytest.approx(1.0)
    teacher = task.frozen["teacher"]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    t_before = [p.clone() for p in teacher.parameters()]
    task.on_step_end(types.SimpleNamespace(model=model, step=0))
    for pt, tb, ps in zip(teacher.parameters(), t_before, model.parameters()):
        assert torch.allclose(pt, 0.9 * tb + 0.1 * ps, atol=1e-6)


def test_levels_and_bad_arguments():
    _, _, task = _task()
    assert task.indices == [2, 3]  # conv4 and conv5 of resnet_pico
    assert [v.words.shape[1] for v in task.vocab] == [64, 128]
    with pytest.raises(ValueError, match="patches"):
        create_task("obow", {"patches": 10})
    with pytest.raises(ValueError, match="momentum"):
        create_task("obow", {"momentum": 1.5})


def test_fit_runs(tmp_path):
    data = load_dataset("shapes:n_train=32,n_val=16,n_test=16,img_size=16")
    model = create_model("resnet_pico", num_classes=data.num_classes, img_size=16)
    recipe = load_recipe("cpu-fast").replace(
        epochs=1,
        batch_size=16,
        warmup_epochs=0,
        task="obow",
        task_args={"num_words": 32, "patches": 1, "crops": 1},
    )
    res = fit(model, data, recipe, tmp_path, progress=False)
    assert res.status == "completed"
    assert res.history[-1]["train_target_perplexity"] > 1.0
