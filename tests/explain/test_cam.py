import pytest
import torch
import torch.nn.functional as F

from archbench.explain import (
    METHODS,
    deletion_insertion,
    explain,
    faithfulness_table,
)
from archbench.models import create_model


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return create_model("resnet_pico", num_classes=7).eval()


def _layer_output(model, x):
    store = {}
    h = model.get_submodule(model.cam_target).register_forward_hook(
        lambda m, i, o: store.__setitem__("a", o)
    )
    logits = model(x)
    h.remove()
    return logits, store["a"]


def test_gap_linear_head_gradcam_and_hirescam_equal_cam(resnet):
    """resnet_pico's head is global average pooling + one linear layer over cam_target."""
    x = torch.randn(3, 3, 32, 32)
    targets = torch.tensor([0, 3, 6])
    with torch.no_grad():
        _, a = _layer_output(resnet, x)
    hw = a.shape[-1] * a.shape[-2]
    w = resnet.head.weight[targets]  # B x C
    cam = torch.einsum("bc,bchw->bhw", w, a) / hw  # each position's share of the logit
    cam = F.relu(cam)
    hires = explain(resnet, x, targets, method="hirescam", upsample=False, normalize=False)
    torch.testing.assert_close(hires, cam, rtol=1e-5, atol=1e-6)
    grad = explain(resnet, x, targets, method="gradcam", upsample=False, normalize=False)
    mask = cam > 1e-6 * cam.amax()
    ratio = grad[mask] / cam[mask]
    assert (ratio > 0).all()
    torch.testing.assert_close(ratio, ratio.mean().expand_as(ratio), rtol=1e-4, atol=0)


def test_eigencam_is_first_principal_component(resnet):
    from sklearn.decomposition import PCA

    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _, a = _layer_output(resnet, x)
    maps = explain(resnet, x, method="eigencam", upsample=False, normalize=False)
    for i in range(2):
        m = a[i].flatten(1).T.double().numpy()  # positions x channels
        score = torch.from_numpy(PCA(n_components=1).fit_transform(m)[:, 0])
        # PCA's sign is arbitrary: take the one that follows the activation norm per position
        norm = a[i].flatten(1).norm(dim=0).double()
        if torch.dot(score, norm - norm.mean()) < 0:
            score = -score
        torch.testing.assert_close(maps[i].flatten().double(), F.relu(score), rtol=1e-3, atol=1e-4)


def test_eigencam_finds_the_varying_region_not_the_mean_direction():
    """A constant background with a strong mean plus an object that differs from it: the
    first principal component separates the object; the uncentred first singular vector
    is the background's mean direction and lights up the background instead."""
    from archbench.explain.cam import eigen_projection

    a = torch.zeros(1, 4, 6, 6)
    a[0, 0] = 10.0  # background: every position has a large channel-0 value
    a[0, 1, 2:4, 2:4] = 6.0  # object: channel 1 at the centre (larger norm)
    a[0, 0, 2:4, 2:4] = 9.0
    proj = eigen_projection(a)[0]
    obj = torch.zeros(6, 6, dtype=torch.bool)
    obj[2:4, 2:4] = True
    assert proj[obj].min() > proj[~obj].max()
    torch.testing.assert_close(proj.sum(), torch.tensor(0.0), atol=1e-4, rtol=0)


def _gradcampp_paper(a, g):
    """Grad-CAM++ written out from the paper, one channel and position at a time."""
    b, c, h, w = a.shape
    maps = torch.zeros(b, h, w, dtype=torch.float64)
    for i in range(b):
        for k in range(c):
            s = float(a[i, k].sum())
            wk = 0.0
            for y in range(h):
                for x in range(w):
                    gij = float(g[i, k, y, x])
                    den = 2 * gij**2 + s * gij**3
                    alpha = gij**2 / den if den > 0 else 0.0
                    wk += alpha * max(gij, 0.0)
            maps[i] += wk * a[i, k].double()
    return F.relu(maps)


def test_gradcampp_matches_the_paper_formula(resnet):
    x = torch.randn(2, 3, 32, 32)
    targets = torch.tensor([2, 5])
    a = []
    h = resnet.get_submodule(resnet.cam_target).register_forward_hook(lambda m, i, o: a.append(o))
    logits = resnet(x)
    h.remove()
    (g,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), a[0])
    ref = _gradcampp_paper(a[0].detach(), g)
    ours = explain(resnet, x, targets, method="gradcam++", upsample=False, normalize=False)
    torch.testing.assert_close(ours.double(), ref, rtol=1e-4, atol=1e-7)
    # gradients here are about 1e-3: the 1e-6 epsilon some implementations add to the
    # denominator would already change alpha by several percent
    assert g.abs().mean() < 1e-2


def test_gradcampp_alpha_near_zero_and_non_positive_denominators():
    from archbench.explain.cam import gradcampp_alpha

    # one channel, four positions; activation sum s = -2
    a = torch.tensor([[[[-1.0, -1.0], [0.0, 0.0]]]], dtype=torch.float64)
    g = torch.tensor([[[[1e-4, 0.0], [0.999, 1.5]]]], dtype=torch.float64)
    alpha = gradcampp_alpha(a, g)[0, 0].flatten()
    s = -2.0
    # tiny gradient: alpha = 1 / (2 + s g) exactly, no epsilon shrinking it
    torch.testing.assert_close(alpha[0], torch.tensor(1 / (2 + s * 1e-4), dtype=torch.float64))
    assert alpha[1] == 0.0  # g = 0
    # 2 + s g = 0.002: near zero but positive, the formula's large value
    torch.testing.assert_close(alpha[2], torch.tensor(1 / (2 + s * 0.999), dtype=torch.float64))
    assert alpha[3] == 0.0  # 2 + s g = -1: no valid alpha


@pytest.mark.parametrize("method", METHODS)
def test_batched_equals_one_image_at_a_time(resnet, method):
    x = torch.randn(3, 3, 32, 32)
    batched = explain(resnet, x, targets=torch.tensor([1, 2, 3]), method=method, batch_size=5)
    single = torch.stack(
        [explain(resnet, x[i : i + 1], targets=[1 + i], method=method)[0] for i in range(3)]
    )
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-4)
    assert batched.shape == (3, 32, 32) and batched.min() >= 0 and batched.max() <= 1


def test_several_targets_per_image(resnet):
    x = torch.randn(2, 3, 32, 32)
    maps = explain(resnet, x, targets=torch.tensor([[0, 1, 2], [3, 4, 5]]), method="gradcam")
    assert maps.shape == (2, 3, 32, 32)
    torch.testing.assert_close(
        maps[:, 1], explain(resnet, x, targets=torch.tensor([1, 4]), method="gradcam")
    )


def test_maps_change_when_weights_are_randomized():
    torch.manual_seed(0)
    model = create_model("resnet_pico", num_classes=5).eval()
    x = torch.randn(4, 3, 32, 32)
    before = explain(model, x, targets=0, method="gradcam")
    torch.manual_seed(123)
    for m in model.modules():
        if hasattr(m, "reset_parameters") and m is not model:
            m.reset_parameters()
    after = explain(model, x, targets=0, method="gradcam")
    corr = torch.stack(
        [
            torch.corrcoef(torch.stack([b.flatten(), a.flatten()]))[0, 1]
            for b, a in zip(before, after)
        ]
    )
    assert corr.nan_to_num(0).mean() < 0.9


def test_token_model_maps(resnet):
    torch.manual_seed(0)
    vit = create_model("vit_pico", num_classes=5).eval()
    vit.reset_classifier(5)
    maps = explain(vit, torch.randn(2, 3, 32, 32), method="gradcam")
    assert maps.shape == (2, 32, 32)
    assert (maps.flatten(1).amax(1) > 0).all()


def test_bad_input_is_explained(resnet):
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="unknown CAM method"):
        explain(resnet, x, method="gradcam3")
    with pytest.raises(ValueError, match="class indices"):
        explain(resnet, x, targets=9)
    with pytest.raises(ValueError, match="no submodule"):
        explain(resnet, x, layer="layer9")
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        explain(resnet, torch.randn(3, 32, 32))


def test_deletion_curve_of_a_perfect_oracle():
    """A model that reads only the top-left quadrant: the map that points there deletes fastest."""

    class Quadrant(torch.nn.Module):
        def forward(self, x):
            s = x[:, :, :16, :16].mean((1, 2, 3))
            return torch.stack([s, -s], 1) * 10

    model = Quadrant()
    x = torch.ones(2, 3, 32, 32)
    good = torch.zeros(2, 32, 32)
    good[:, :16, :16] = 1
    bad = 1 - good
    base = torch.zeros_like(x)
    r_good = deletion_insertion(
        model, x, good, targets=torch.zeros(2, dtype=torch.long), baseline=base
    )
    r_bad = deletion_insertion(
        model, x, bad, targets=torch.zeros(2, dtype=torch.long), baseline=base
    )
    assert (r_good["deletion_auc"] < r_bad["deletion_auc"]).all()
    assert (r_good["insertion_auc"] > r_bad["insertion_auc"]).all()
    assert r_good["deletion"].shape == (2, 17)


def test_faithfulness_table_lists_methods_and_random_reference(resnet):
    rows = faithfulness_table(resnet, torch.randn(2, 3, 32, 32), ["gradcam", "eigencam"], steps=4)
    assert [r["method"] for r in rows] == ["gradcam", "eigencam", "random (reference)"]
    assert all(0 <= r["deletion_auc"] <= 1 and 0 <= r["insertion_auc"] <= 1 for r in rows)
