"""Batched and chunked CAM against per-image calls and the papers' formulas on a tiny model.

The tiny model is conv -> ReLU -> conv (the explained layer) -> ReLU -> global average
pool -> linear, small enough to write Grad-CAM and Score-CAM out by hand here.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from archbench.explain import explain
from archbench.explain.cam import CHUNK_PIXELS, default_chunk_size


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


@pytest.mark.parametrize("method", ["gradcam", "scorecam", "gradcam++", "ablationcam"])
@pytest.mark.parametrize("chunk_size", [1, 2, 5])
def test_chunks_and_batches_equal_one_image_at_a_time(tiny, method, chunk_size):
    torch.manual_seed(3)
    x = torch.randn(5, 3, 8, 8, dtype=torch.float64)
    targets = torch.tensor([[0, 3], [1, 1], [2, 5], [3, 0], [4, 2]])  # two targets each
    # batch_size 7 < 5 images x 5 channels: masked passes mix images within one forward
    got = explain(tiny, x, targets=targets, method=method, chunk_size=chunk_size, batch_size=7)
    single = torch.cat(
        [explain(tiny, x[i : i + 1], targets=targets[i : i + 1], method=method) for i in range(5)]
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


def test_default_chunk_follows_the_pixel_budget():
    assert default_chunk_size(224, 224) == CHUNK_PIXELS // (224 * 224)
    assert default_chunk_size(32, 32) == CHUNK_PIXELS // 1024
    assert default_chunk_size(10_000, 10_000) == 1
    # the measured choice: one 224x224 image per chunk, 64 at 32x32 (one CIFAR batch)
    assert (default_chunk_size(224, 224), default_chunk_size(32, 32)) == (1, 64)


def test_bad_chunk_and_target_lengths_are_refused(tiny):
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="chunk_size"):
        explain(tiny, x, chunk_size=0)
    with pytest.raises(ValueError, match="batch_size"):
        explain(tiny, x, method="scorecam", batch_size=-1)
    with pytest.raises(ValueError, match="2 entries for a batch of 3"):
        explain(tiny, x, targets=[1, 2], chunk_size=1)
