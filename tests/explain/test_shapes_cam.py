"""A CNN trained on `shapes` looks at the object: Grad-CAM density is higher inside its mask."""

import torch

from archbench.data import load_dataset
from archbench.data.transforms import normalize
from archbench.explain import explain
from archbench.models import create_model
from archbench.train import fit, load_recipe


def test_trained_cnn_gradcam_concentrates_on_the_object(tmp_path):
    torch.manual_seed(0)
    data = load_dataset("shapes:n_train=2000,n_val=200,n_test=200", seed=0)
    model = create_model("resnet_pico", num_classes=data.num_classes)
    result = fit(model, data, load_recipe("cpu-fast").replace(epochs=5), tmp_path, progress=False)
    assert result.best_val_top1 > 0.2  # well above chance (0.1): the model has learned something
    test = data.test
    n = 100
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    x = normalize(test.images[:n].float() / 255.0, mean, std)
    masks = test.masks[:n].bool()
    maps = explain(model, x, targets=test.labels[:n], method="gradcam")
    inside = (maps * masks).sum((1, 2)) / masks.sum((1, 2))
    outside = (maps * ~masks).sum((1, 2)) / (~masks).sum((1, 2))
    # objects cover ~11% of the image: compare saliency per pixel, inside against outside
    assert inside.mean() > 1.3 * outside.mean()
    assert (inside > outside).float().mean() >= 0.6
