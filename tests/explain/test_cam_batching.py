"""Batched and chunked CAM against per-image calls and the papers' formulas on a tiny model.

The tiny model is conv -> ReLU -> conv (the explained layer) -> ReLU -> global average
pool -> linear, small enough to write Grad-CAM, Score-CAM and Ablation-CAM out by hand
here.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from archbench.explain import METHODS, explain
from archbench.explain import cam as cam_module
from archbench.explain.cam import images_per_pass


class _Tiny(nn.Module):
    cam_target = "conv2"

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 5, 3, stride=2, padding=1)
        self.fc = nn.Linear(5, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv2(F.relu(self.conv1(x)))
        return self.fc(F.relu(a).mean((2, 3)))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return _Tiny().double().eval()


def _activation_and_logits(model: _Tiny, x: torch.Tensor):
    a = model.conv2(F.relu(model.conv1(x)))
    return a, model.fc(F.relu(a).mean((2, 3)))


def _minmax(m: torch.Tensor) -> torch.Tensor:
    flat = m.flatten(-2)
    lo, hi = flat.amin(-1, keepdim=True), flat.amax(-1, keepdim=True)
    return ((flat - lo) / (hi - lo).clamp_min(1e-7)).view_as(m)


def test_gradcam_matches_the_formula(tiny):
    """ReLU(sum_k mean_ij(dy_c/dA_k) A_k), the gradient written out through the head."""
    torch.manual_seed(1)
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    targets = torch.tensor([0, 4, 2])
    a, _ = _activation_and_logits(tiny, x)
    # y_c = sum_k W[c, k] mean_ij relu(A_kij) + b_c, so dy_c/dA_kij = W[c, k] [A_kij > 0] / (h w)
    h, w = a.shape[-2:]
    grad = tiny.fc.weight[targets][:, :, None, None] * (a > 0) / (h * w)
    expect = F.relu((grad.mean((2, 3), keepdim=True) * a).sum(1)).detach()
    got = explain(tiny, x, targets=targets, upsample=False, normalize=False)
    torch.testing.assert_close(got, expect.to(got.dtype), rtol=1e-5, atol=1e-7)
    # and through explain's own upsampling and normalisation
    up = F.interpolate(expect[:, None], size=(8, 8), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(explain(tiny, x, targets=targets), _minmax(up).float())


def test_scorecam_matches_the_formula(tiny):
    """Score-CAM (Wang et al., 2020): weights = softmax over channels of the target's
    softmax score on the input masked by each upsampled, min-max normalised map."""
    torch.manual_seed(2)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    targets = torch.tensor([5, 1])
    a, _ = _activation_and_logits(tiny, x)
    rows = []
    with torch.no_grad():
        for i in range(2):
            scores = []
            for k in range(a.shape[1]):
                up = F.interpolate(a[i : i + 1, k : k + 1], size=(8, 8), mode="bilinear")
                mask = (up - up.min()) / (up.max() - up.min())
                scores.append(torch.softmax(tiny(x[i : i + 1] * mask), -1)[0, targets[i]])
            weights = torch.softmax(torch.stack(scores), 0)
            rows.append(F.relu((weights[:, None, None] * a[i]).sum(0)))
    expect = torch.stack(rows)
    got = explain(
        tiny, x, targets=targets, method="scorecam", upsample=False, normalize=False, batch_size=3
    )
    torch.testing.assert_close(got, expect.to(got.dtype), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("chunk_size", "batch_size"), [(1, 7), (2, 3), (3, None), (None, 7)])
def test_chunks_and_batches_equal_one_image_at_a_time(tiny, method, chunk_size, batch_size):
    torch.manual_seed(3)
    x = torch.randn(5, 3, 8, 8, dtype=torch.float64)
    targets = torch.tensor([[0, 3], [1, 1], [2, 5], [3, 0], [4, 2]])  # two targets each
    # chunks of 2 and 3 split the 5 images unevenly; forwards of 3 or 7 masked inputs
    # (< 5 channels x 2+ images) mix images within one forward
    got = explain(
        tiny, x, targets=targets, method=method, chunk_size=chunk_size, batch_size=batch_size
    )
    single = torch.cat(
        [
            explain(tiny, x[i : i + 1], targets=targets[i : i + 1], method=method, batch_size=1)
            for i in range(5)
        ]
    )
    assert got.shape == (5, 2, 8, 8)
    torch.testing.assert_close(got, single, rtol=1e-6, atol=1e-6)


def test_predicted_class_targets_are_per_chunk_images(tiny):
    torch.manual_seed(4)
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    pred = tiny(x).argmax(1)
    torch.testing.assert_close(
        explain(tiny, x, chunk_size=3), explain(tiny, x, targets=pred, chunk_size=4)
    )


def test_gradcam_works_on_a_frozen_model_and_leaves_it_alone(tiny):
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    ref = explain(tiny, x, targets=[1, 2])
    for p in tiny.parameters():
        p.requires_grad_(False)
    try:
        torch.testing.assert_close(explain(tiny, x, targets=[1, 2]), ref)
        assert all(p.grad is None for p in tiny.parameters())
    finally:
        for p in tiny.parameters():
            p.requires_grad_(True)
    assert torch.is_grad_enabled()


def test_images_per_pass_is_the_activation_budget():
    budget = cam_module.ACTIVATION_BYTES
    assert images_per_pass(budget // 3) == 3
    assert images_per_pass(budget + 1) == 1  # never fewer than one image
    # resnet_pico: its largest output is 16 channels x H x W in float32
    assert images_per_pass(16 * 224 * 224 * 4) == 1
    assert images_per_pass(16 * 32 * 32 * 4) == 64


def _batch_sizes(model):
    sizes: list[int] = []
    handle = model.register_forward_pre_hook(lambda _m, args: sizes.append(len(args[0])))
    return sizes, handle


@pytest.mark.parametrize("method", ["gradcam", "scorecam", "ablationcam"])
def test_automatic_sizes_follow_the_largest_activation(method, monkeypatch):
    """conv1's output, 4 x 8 x 8 float64 values (2048 bytes) per image, is the tiny model's
    largest: with a budget of three of those, passes hold three images (or three masked
    inputs) after a first forward of one image that measures it; later calls with the same
    input size reuse the measurement, a larger input size is measured anew."""
    torch.manual_seed(8)
    model = _Tiny().double().eval()  # fresh: nothing measured yet
    monkeypatch.setattr(cam_module, "ACTIVATION_BYTES", 3 * 4 * 8 * 8 * 8 + 5)
    x = torch.randn(7, 3, 8, 8, dtype=torch.float64)
    targets = torch.arange(7) % 6
    sizes, handle = _batch_sizes(model)
    try:
        first = explain(model, x, targets=targets, method=method)
    finally:
        handle.remove()
    if method == "gradcam":
        assert sizes == [1, 3, 3]
    else:  # first image: activation pass then its masked passes, then per chunk of 3
        assert sizes[0] == 1 and max(sizes) == 3
        assert sizes.count(3) >= 5 * 6 // 3  # the other six images' 30 inputs, three a pass
    sizes, handle = _batch_sizes(model)
    try:
        again = explain(model, x, targets=targets, method=method)
    finally:
        handle.remove()
    if method == "gradcam":
        # measured already: no single-image first pass; the rule's size gets its second
        # timed pass, then twice that size is next, more than the 4 left: 3 at the tuned
        # size, then 1 (test_an_automatic_chunk_is_tuned_by_timing)
        assert sizes == [3, 3, 1]
    torch.testing.assert_close(again, first)
    # the same budget with wider inputs: per-image bytes grow, one image per pass
    sizes, handle = _batch_sizes(model)
    try:
        explain(model, torch.randn(4, 3, 16, 16, dtype=torch.float64), targets=0)
    finally:
        handle.remove()
    assert sizes == [1, 1, 1, 1]


def _fake_pass_times(monkeypatch, per_image: dict[int, float | list[float]]) -> None:
    """Every pass of n images "takes" ``n * per_image[n]`` seconds on explain's clock (a
    list: the successive passes of that size, the last value repeating)."""
    now = [0.0]
    raw = cam_module._raw_maps
    calls: dict[int, int] = {}

    def timed_raw(model, layer, x, *args):
        n = len(x)
        value = per_image[n]
        if isinstance(value, list):
            value = value[min(calls.get(n, 0), len(value) - 1)]
        calls[n] = calls.get(n, 0) + 1
        now[0] += n * value
        return raw(model, layer, x, *args)

    monkeypatch.setattr(cam_module, "_clock", lambda: now[0])
    monkeypatch.setattr(cam_module, "_raw_maps", timed_raw)


def test_an_automatic_chunk_is_tuned_by_timing(monkeypatch):
    """From the rule's size (1 here), twice as many images per pass while that is more
    than 5% faster per image: 2 is (0.8 s against 1.0), 4 is (0.7 against 0.8), 8 is not
    (0.9), so the rest go 4 at a time. Each size is timed on its second and third passes
    (the first sets up that batch size's kernels); every pass's maps are kept, the same
    as per-image calls; the result holds for later calls on the same model and input size."""
    torch.manual_seed(11)
    model = _Tiny().double().eval()
    monkeypatch.setattr(cam_module, "ACTIVATION_BYTES", 4 * 8 * 8 * 8 + 5)  # one image
    _fake_pass_times(monkeypatch, {1: 1.0, 2: 0.8, 3: 0.75, 4: 0.7, 8: 0.9})
    x = torch.randn(60, 3, 8, 8, dtype=torch.float64)
    targets = torch.arange(60) % 6
    sizes, handle = _batch_sizes(model)
    try:
        got = explain(model, x, targets=targets)
    finally:
        handle.remove()
    # measure, then 1, 2, 4 and 8 three times each (one untimed, two timed), then the
    # best (4) for the last 14
    assert sizes == [1, 1, 1, 1, 2, 2, 2, 4, 4, 4, 8, 8, 8, 4, 4, 4, 2]
    loop = torch.cat([explain(model, x[i : i + 1], targets=targets[i : i + 1]) for i in range(60)])
    torch.testing.assert_close(got, loop)
    sizes, handle = _batch_sizes(model)
    try:
        explain(model, x[:11], targets=targets[:11])
    finally:
        handle.remove()
    assert sizes == [4, 4, 3]  # tuned: no more trials
    # a pass of more images that is only 4% faster per image is not taken
    fresh = _Tiny().double().eval()
    _fake_pass_times(monkeypatch, {1: 1.0, 2: 0.96})
    sizes, handle = _batch_sizes(fresh)
    try:
        explain(fresh, x[:12], targets=targets[:12])
    finally:
        handle.remove()
    assert sizes == [1, 1, 1, 1, 2, 2, 2, 1, 1]


def test_the_faster_of_two_timed_passes_counts(monkeypatch):
    """Each size counts by the faster of its two timed passes: 2 is taken although its
    first timed pass was slowed (1.2 s per image, then 0.8 against 1.0 at one image), 4
    although its second was (0.7, then 1.2), 8 is not (0.9 on both)."""
    torch.manual_seed(12)
    model = _Tiny().double().eval()
    monkeypatch.setattr(cam_module, "ACTIVATION_BYTES", 4 * 8 * 8 * 8 + 5)  # one image
    # per size: the untimed pass, then the two timed ones
    _fake_pass_times(monkeypatch, {1: 1.0, 2: [0.8, 1.2, 0.8], 4: [0.7, 0.7, 1.2], 8: 0.9})
    x = torch.randn(50, 3, 8, 8, dtype=torch.float64)
    sizes, handle = _batch_sizes(model)
    try:
        explain(model, x, targets=0)
    finally:
        handle.remove()
    assert sizes == [1, 1, 1, 1, 2, 2, 2, 4, 4, 4, 8, 8, 8, 4]


def test_a_given_chunk_measures_per_image_bytes(monkeypatch):
    """With chunk_size given and batch_size automatic, the first forward holds four images:
    the budget of three images' bytes still gives masked passes of three inputs."""
    torch.manual_seed(10)
    model = _Tiny().double().eval()
    monkeypatch.setattr(cam_module, "ACTIVATION_BYTES", 3 * 4 * 8 * 8 * 8 + 5)
    sizes, handle = _batch_sizes(model)
    try:
        explain(
            model, torch.randn(4, 3, 8, 8, dtype=torch.float64), method="scorecam", chunk_size=4
        )
    finally:
        handle.remove()
    assert sizes[0] == 4 and max(sizes[1:]) == 3


def test_a_model_in_train_mode_is_explained_in_eval_mode_and_put_back():
    torch.manual_seed(9)
    model = _Tiny().double()
    model.conv1 = nn.Sequential(model.conv1, nn.Dropout(0.5))  # eval mode matters
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    model.eval()
    ref = explain(model, x, targets=[1, 2, 3])
    model.train()
    torch.testing.assert_close(explain(model, x, targets=[1, 2, 3]), ref)
    assert all(m.training for m in model.modules())


def _tiny_with_constant_channels() -> _Tiny:
    """conv2's channel 1 is 0 everywhere and channel 3 is 0.5 everywhere."""
    torch.manual_seed(5)
    model = _Tiny().double().eval()
    with torch.no_grad():
        model.conv2.weight[1] = 0
        model.conv2.bias[1] = 0
        model.conv2.weight[3] = 0
        model.conv2.bias[3] = 0.5
    return model


def test_scorecam_constant_maps_are_zero_masks_shared_across_images():
    """Score-CAM with the constant maps' 0/0 normalisation read as 0: their masked input
    is a zero image. Written out per image and channel; and the batched call runs one
    zero image for all images instead of one per constant map."""
    model = _tiny_with_constant_channels()
    torch.manual_seed(6)
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    targets = torch.tensor([2, 0, 5])
    a, _ = _activation_and_logits(model, x)
    rows = []
    with torch.no_grad():
        for i in range(3):
            scores = []
            for k in range(5):
                up = F.interpolate(a[i : i + 1, k : k + 1], size=(8, 8), mode="bilinear")
                rng = up.max() - up.min()
                mask = torch.zeros_like(up) if k in (1, 3) else (up - up.min()) / rng
                scores.append(torch.softmax(model(x[i : i + 1] * mask), -1)[0, targets[i]])
            weights = torch.softmax(torch.stack(scores), 0)
            rows.append(F.relu((weights[:, None, None] * a[i]).sum(0)))
    expect = torch.stack(rows)
    sizes, handle = _batch_sizes(model)
    try:
        got = explain(
            model, x, targets, method="scorecam", upsample=False, normalize=False, batch_size=50
        )
    finally:
        handle.remove()
    torch.testing.assert_close(got, expect.to(got.dtype), rtol=1e-5, atol=1e-7)
    # first image alone (it sizes the passes), then the other two; per chunk: activation
    # pass, one zero image, the 3 non-constant maps per image
    assert sizes == [1, 1, 3, 2, 1, 6]


def test_ablationcam_matches_the_formula():
    """Ablation-CAM (Desai & Ramaswamy, 2020): w_k = (y_c - y_c^k) / y_c with y_c^k the
    target's logit when channel k of the layer is zeroed (here divided by |y_c|, so that
    a negative logit does not flip the signs); map = ReLU(sum_k w_k A_k)."""
    model = _tiny_with_constant_channels()
    torch.manual_seed(7)
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    targets = torch.tensor([4, 1, 3])
    a, logits = _activation_and_logits(model, x)
    rows = []
    with torch.no_grad():
        for i in range(3):
            y = logits[i, targets[i]]
            w = []
            for k in range(5):
                ablated = a[i : i + 1].clone()
                ablated[:, k] = 0
                yk = model.fc(F.relu(ablated).mean((2, 3)))[0, targets[i]]
                w.append((y - yk) / y.abs())
            rows.append(F.relu((torch.stack(w)[:, None, None] * a[i]).sum(0)))
    expect = torch.stack(rows)
    sizes, handle = _batch_sizes(model)
    try:
        got = explain(
            model, x, targets, method="ablationcam", upsample=False, normalize=False, batch_size=50
        )
    finally:
        handle.remove()
    torch.testing.assert_close(got, expect.to(got.dtype), rtol=1e-5, atol=1e-7)
    # channel 1 is zero everywhere: ablating it changes nothing and costs no forward
    assert sizes == [1, 4, 2, 8]


def test_bad_chunk_and_target_lengths_are_refused(tiny):
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="chunk_size"):
        explain(tiny, x, chunk_size=0)
    with pytest.raises(ValueError, match="batch_size"):
        explain(tiny, x, method="scorecam", batch_size=-1)
    with pytest.raises(ValueError, match="2 entries for a batch of 3"):
        explain(tiny, x, targets=[1, 2], chunk_size=1)
