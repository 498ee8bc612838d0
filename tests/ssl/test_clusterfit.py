"""ClusterFit: k-means pseudo-labels, the fresh network, nearest-centre validation labels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from archbench.data import load_dataset
from archbench.models import create_model
from archbench.ssl.clusterfit import ClusterFit, cluster_pseudo_labels, embed_split, reinitialize
from archbench.train import fit, load_recipe


def test_kmeans_recovers_separated_groups():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0]])
    truth = torch.arange(30) % 3
    feats = centres[truth] + 0.1 * torch.randn(30, 3, generator=g)
    labels, found = cluster_pseudo_labels(feats, 3, seed=0)
    # the same partition up to renaming the clusters
    pairs = {(int(a), int(b)) for a, b in zip(truth, labels)}
    assert len(pairs) == 3 and len({b for _, b in pairs}) == 3
    assert found.shape == (3, 3)
    with pytest.raises(ValueError, match="clusters"):
        cluster_pseudo_labels(feats, 31)


def test_reinitialize_draws_new_weights():
    model = create_model("resnet_pico", num_classes=10, img_size=16)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.5)
    assert reinitialize(model) > 0
    # every layer was reset: no parameter keeps the filled value everywhere
    assert all((p != 0.5).any() for p in model.parameters())


def test_setup_labels_train_by_kmeans_and_val_by_nearest_centre():
    data = load_dataset("shapes:n_train=24,n_val=8,n_test=8,img_size=16")
    model = create_model("resnet_pico", num_classes=data.num_classes, img_size=16)
    torch.manual_seed(1)
    reference = create_model("resnet_pico", num_classes=data.num_classes, img_size=16)
    model.load_state_dict(reference.state_dict())
    task = ClusterFit(clusters=4)
    recipe = load_recipe("cpu-fast")
    task.setup(model, data, recipe)
    # the pseudo-labels are k-means of the *given* network's features ...
    feats = embed_split(reference, data.train)
    labels, centres = cluster_pseudo_labels(feats, 4, int(recipe.seed))
    assert torch.equal(task.pseudo, labels)
    val = embed_split(reference, data.val)
    assert torch.equal(task.val_pseudo, (val @ F.normalize(centres, dim=1).T).argmax(1))
    # ... and the network that trains on them starts from scratch
    same = [torch.equal(a, b) for a, b in zip(model.parameters(), reference.parameters())]
    assert not all(same)
    assert task.trainable["classifier"].out_features == 4


def test_fit_trains_on_pseudo_labels(tmp_path):
    data = load_dataset("shapes:n_train=32,n_val=16,n_test=16,img_size=16")
    model = create_model("resnet_pico", num_classes=data.num_classes, img_size=16)
    recipe = load_recipe("cpu-fast").replace(
        epochs=1, batch_size=16, warmup_epochs=0, task="clusterfit", task_args={"clusters": 4}
    )
    res = fit(model, data, recipe, tmp_path, progress=False)
    assert res.status == "completed"
    assert 0.0 <= res.history[-1]["val_top1"] <= 1.0
