"""The batched self-supervised augmentations against hand-computed or independent results."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter1d

from archbench.ssl import augment as A


def _images(b=4, c=3, s=8, seed=0):
    return torch.rand(b, c, s, s, generator=torch.Generator().manual_seed(seed))


def test_rotations_are_exact_quarter_turns():
    x = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).view(2, 1, 3, 3)
    out, labels = A.rotation_batch(x)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    img = x[0, 0]
    # 90 degrees counter-clockwise: the first row becomes the first column, read upwards
    expected90 = torch.tensor([[2.0, 5, 8], [1, 4, 7], [0, 3, 6]])
    assert torch.equal(out[0, 0], img)
    assert torch.equal(out[2, 0], expected90)
    assert torch.equal(out[4, 0], img.flip(0).flip(1))
    assert torch.equal(out[6, 0], expected90.flip(0).flip(1))
    # per-image angles
    k = torch.tensor([3, 1])
    rot = A.rotate90(x, k)
    assert torch.equal(rot[1, 0], expected90 + 9)
    assert torch.equal(rot[0, 0], torch.from_numpy(np.rot90(x[0, 0].numpy(), 3).copy()))


def test_grayscale_uses_luma_and_probability():
    x = _images()
    g = A.grayscale(x, p=1.0)
    luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    for c in range(3):
        torch.testing.assert_close(g[:, c], luma)
    assert torch.equal(A.grayscale(x, p=0.0), x)


def test_solarize_inverts_above_threshold():
    x = torch.tensor([0.1, 0.49, 0.5, 0.9]).view(1, 1, 1, 4)
    out = A.solarize(x, threshold=0.5, p=1.0)
    torch.testing.assert_close(out.flatten(), torch.tensor([0.1, 0.49, 0.5, 0.1]))


def test_gaussian_blur_matches_scipy():
    x = _images(b=1, c=1, s=12)
    sigma = 1.3
    out = A.gaussian_blur(x, sigma=(sigma, sigma), p=1.0, kernel_size=5)
    ref = x[0, 0].double().numpy()
    for axis in (1, 0):
        ref = gaussian_filter1d(ref, sigma, axis=axis, mode="mirror", truncate=2 / sigma)
    np.testing.assert_allclose(out[0, 0].double().numpy(), ref, atol=1e-5)


def test_color_jitter_brightness_only_scales_and_clamps():
    x = _images()
    g = torch.Generator().manual_seed(3)
    out = A.color_jitter(x, brightness=0.4, contrast=0, saturation=0, hue=0, p=1.0, generator=g)
    g = torch.Generator().manual_seed(3)
    factor = 0.6 + 0.8 * torch.rand(4, generator=g)
    torch.testing.assert_close(out, (x * factor.view(-1, 1, 1, 1)).clamp(0, 1))


def test_hue_rotation_by_full_turn_and_gray_invariance():
    x = _images()
    torch.testing.assert_close(
        A._hue_rotate(x, torch.full((4,), 2 * math.pi)), x, atol=1e-5, rtol=0
    )
    gray = x[:, :1].expand(-1, 3, -1, -1)
    torch.testing.assert_close(A._hue_rotate(gray, torch.full((4,), 1.0)), gray, atol=1e-5, rtol=0)


def test_jigsaw_permutes_tiles_and_mask_counts():
    x = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    out, perm = A.patch_jigsaw(x, grid=2, permutations=torch.tensor([[3, 2, 1, 0]]))
    assert perm.tolist() == [0]
    tiles = A.patchify(x, 2)
    assert torch.equal(A.patchify(out, 2)[0], tiles[0].flip(0))
    assert torch.equal(A.unpatchify(tiles, (2, 2)), x)
    m = A.random_mask(5, 16, 0.75, torch.Generator().manual_seed(0))
    assert m.sum(1).tolist() == [12] * 5
    masked = A.mask_patches(torch.ones(5, 1, 8, 8), m, 2)
    assert masked.sum().item() == 5 * 4 * 4


def test_multi_crop_shapes_and_determinism():
    x = _images(s=16)
    views = A.multi_crop(x, (16, 8), (2, 3), generator=torch.Generator().manual_seed(1))
    assert [tuple(v.shape[-2:]) for v in views] == [(16, 16)] * 2 + [(8, 8)] * 3
    again = A.multi_crop(x, (16, 8), (2, 3), generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip(views, again))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: A.grayscale(torch.rand(3, 8, 8)), r"\(B, C, H, W\)"),
        (lambda: A.solarize(torch.zeros(1, 3, 4, 4, dtype=torch.uint8)), "to_unit"),
        (lambda: A.color_jitter(torch.rand(1, 3, 4, 4), p=2.0), r"p must be in \[0, 1\]"),
        (lambda: A.random_mask(2, 4, 1.0), r"ratio must be in \[0, 1\)"),
        (lambda: A.patch_jigsaw(torch.rand(1, 3, 5, 5), grid=2), "divisible by grid=2"),
        (lambda: A.multi_crop(torch.rand(1, 3, 8, 8), (8,), (1, 2), ((0.5, 1),)), "one entry"),
    ],
)
def test_bad_input_fails_clearly(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()
