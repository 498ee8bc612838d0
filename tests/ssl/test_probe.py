"""The evaluation protocol: k-NN and linear probes, chosen on data carved from train only."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

import archbench.ssl.probe as P
from archbench.data import DataBundle, ImageTensorDataset


def test_knn_on_one_hot_label_features_is_perfect():
    g = torch.Generator().manual_seed(0)
    bank_y = torch.randint(0, 5, (60,), generator=g)
    query_y = torch.randint(0, 5, (40,), generator=g)
    one_hot = torch.eye(5)
    for k in (1, 7, 20):
        scores = P.knn_predict(one_hot[bank_y], bank_y, one_hot[query_y], k, 5)
        assert (scores.argmax(1) == query_y).all()


def test_knn_weighted_vote_by_hand():
    bank = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    q = torch.tensor([[0.8, 0.6]])
    t = 0.5
    sims = bank @ q[0]  # unit vectors already
    # k=3: class 0 gets exp(0.8/T), class 1 exp(0.96/T) + exp(0.6/T)
    expected = torch.tensor(
        [[torch.exp(sims[0] / t), torch.exp(sims[1] / t) + torch.exp(sims[2] / t)]]
    )
    torch.testing.assert_close(P.knn_predict(bank, labels, q, 3, 2, t), expected)
    # k=1: only the nearest (index 1, sim 0.96) votes
    torch.testing.assert_close(
        P.knn_predict(bank, labels, q, 1, 2, t),
        torch.tensor([[0.0, float(torch.exp(sims[1] / t))]]),
    )


class _FeatureModel(nn.Module):
    """Features = a fixed linear read-out of the pixel means per channel: a stand-in encoder."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.eye(3))

    def forward_features(self, x):
        return x.mean(dim=(2, 3)) @ self.w

    def forward_head(self, x, pre_logits=False):
        return x


def _colour_bundle(n_train=120, n_test=60, seed=0):
    """Three classes, one colour channel brighter per class: linearly separable."""
    g = torch.Generator().manual_seed(seed)

    def split(n):
        y = torch.arange(n) % 3
        x = torch.rand(n, 3, 4, 4, generator=g) * 100
        x[torch.arange(n), y] += 120
        return ImageTensorDataset(x.to(torch.uint8), y)

    return DataBundle(
        "colours",
        "colours",
        split(n_train),
        split(30),
        split(n_test),
        3,
        ["r", "g", "b"],
        3,
        4,
        (0.5, 0.5, 0.5),
        (0.25, 0.25, 0.25),
    )


class _Guarded:
    """A test split that refuses to be read until ``state['chosen']`` says every choice is made."""

    def __init__(self, split, state):
        self._split, self._state = split, state

    def _read(self, name):
        if not self._state["chosen"]:
            raise AssertionError(f"the test split was read ({name}) before the probe chose")
        self._state["reads"] += 1
        return getattr(self._split, name)

    images = property(lambda self: self._read("images"))
    labels = property(lambda self: self._read("labels"))
    mean = property(lambda self: self._read("mean"))
    std = property(lambda self: self._read("std"))

    def __len__(self):
        return len(self._read("labels"))


def test_probe_never_reads_test_before_choosing(monkeypatch):
    data = _colour_bundle()
    state = {"chosen": False, "reads": 0, "lin": 0, "knn": 0}
    train_n = len(data.train)
    real_wd, real_k = P.choose_weight_decay, P.choose_k

    def spy_wd(x, y, fit_idx, val_idx, wds):
        assert len(x) == train_n  # candidates see training features only
        assert not set(fit_idx.tolist()) & set(val_idx.tolist())
        state["lin"] += 1
        return real_wd(x, y, fit_idx, val_idx, wds)

    def spy_k(x, y, fit_idx, val_idx, num_classes, ks, temperature):
        assert len(x) == train_n
        state["knn"] += 1
        out = real_k(x, y, fit_idx, val_idx, num_classes, ks, temperature)
        state["chosen"] = state["lin"] == 1  # both choices made
        return out

    monkeypatch.setattr(P, "choose_weight_decay", spy_wd)
    monkeypatch.setattr(P, "choose_k", spy_k)
    guarded = _Guarded(data.test, state)
    bundle = SimpleNamespace(
        train=data.train,
        val=data.val,
        num_classes=3,
        split=lambda name: guarded if name == "test" else data.split(name),
    )
    res = P.probe(_FeatureModel(), bundle, weight_decays=(1e-4, 1e-1), ks=(1, 5))
    assert state["reads"] > 0 and state["lin"] == 1 and state["knn"] == 1
    assert res["linear"]["acc"] == 1.0 and res["knn"]["acc"] == 1.0
    assert res["n_select_val"] == 24 and res["n_train"] == train_n


def test_weight_decay_choice_depends_on_train_only(monkeypatch):
    """Swapping the test split's labels for noise changes the score, never the choice."""
    data = _colour_bundle()
    noisy = _colour_bundle(seed=1)
    noisy.test.labels = torch.randint(0, 3, (len(noisy.test),))
    noisy.train, noisy.val = data.train, data.val
    a = P.probe(_FeatureModel(), data, kind="linear", weight_decays=(1e-5, 1e-2, 10.0))
    b = P.probe(_FeatureModel(), noisy, kind="linear", weight_decays=(1e-5, 1e-2, 10.0))
    assert a["linear"]["weight_decay"] == b["linear"]["weight_decay"]
    assert a["linear"]["candidates"] == b["linear"]["candidates"]
    assert a["linear"]["acc"] == 1.0 and b["linear"]["acc"] < 0.7
    # separable features: every candidate scores 1.0 and the tie goes to the largest decay
    assert a["linear"]["weight_decay"] == 10.0


def test_linear_probe_weight_decay_is_the_mean_loss_penalty():
    """C = 1 / (lambda * n): the fitted weights minimise mean CE + lambda/2 ||W||^2."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 3, generator=g), torch.arange(40) % 2
    lam = 0.05
    pipe = P.fit_linear(x, y, lam, max_iter=2000)
    scaler, clf = pipe[0], pipe[-1]
    xs = torch.as_tensor(scaler.transform(x.numpy()), dtype=torch.float64)
    w = torch.tensor(clf.coef_, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(clf.intercept_, dtype=torch.float64, requires_grad=True)
    # binary case: sklearn's single logit; the gradient of the objective vanishes at the fit
    logit = xs @ w.T + b
    loss = (
        nn.functional.binary_cross_entropy_with_logits(logit.flatten(), y.double())
        + lam / 2 * (w**2).sum()
    )
    loss.backward()
    assert w.grad.abs().max() < 1e-4 and b.grad.abs().max() < 1e-4


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kind="svm"), "linear, knn, both"),
        (dict(split="train"), "'test' or 'val'"),
        (dict(val_fraction=1.5), r"val_fraction must be in \(0, 1\)"),
        (dict(weight_decays=()), "at least one"),
    ],
)
def test_probe_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        P.probe(_FeatureModel(), _colour_bundle(), **kwargs)
