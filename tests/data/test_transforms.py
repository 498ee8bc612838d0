from __future__ import annotations

import pytest
import torch

from archbench.data import BatchAugment, BatchLoader, make_shapes
from archbench.data.transforms import (
    cutmix,
    cutout,
    mixup,
    one_hot_smooth,
    random_crop_flip,
    random_resized_crop,
)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_random_resized_crop_full_box_is_identity_and_flip_is_exact():
    x = torch.rand(4, 3, 8, 8)
    same = random_resized_crop(x, 8, scale=(1, 1), ratio=(1, 1), hflip=0.0, generator=_gen())
    assert torch.allclose(same, x, atol=1e-5)
    flipped = random_resized_crop(x, 8, scale=(1, 1), ratio=(1, 1), hflip=1.0, generator=_gen())
    assert torch.allclose(flipped, x.flip(-1), atol=1e-5)
    small = random_resized_crop(x, 8, scale=(0.1, 0.2), generator=_gen())
    assert small.shape == x.shape and not torch.allclose(small, x, atol=1e-2)


def test_padded_crop_shifts_whole_pixels_with_zero_fill():
    x = torch.rand(64, 1, 6, 6) + 1.0  # strictly positive so zero fill is visible
    y = random_crop_flip(x, pad=2, hflip=0.0, generator=_gen(1))
    for i in range(64):  # each output is the input shifted by some (dy, dx) in [-2, 2]
        found = False
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                ref = torch.zeros_like(x[i])
                ys, yd = slice(max(dy, 0), 6 + min(dy, 0)), slice(max(-dy, 0), 6 + min(-dy, 0))
                xs, xd = slice(max(dx, 0), 6 + min(dx, 0)), slice(max(-dx, 0), 6 + min(-dx, 0))
                ref[:, yd, xd] = x[i][:, ys, xs]
                found |= torch.equal(ref, y[i])
        assert found, i
    assert (y == 0).any()  # some images were shifted


def test_cutout_zeroes_one_square_per_image():
    x = torch.ones(16, 2, 12, 12)
    y = cutout(x, 4, generator=_gen())
    zeros = (y[:, 0] == 0).sum(dim=(1, 2))
    assert (zeros <= 16).all() and (zeros >= 4).all()  # clipped at borders, never empty
    assert torch.equal(y[:, 0] == 0, y[:, 1] == 0)  # same hole in every channel


def test_mixup_cutmix_targets_follow_the_mixed_area():
    x = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 8, 8).contiguous()
    t = one_hot_smooth(torch.tensor([0, 1, 2, 3]), 4)
    xm, tm, lam = mixup(x, t, 0.4, _gen(2))
    assert torch.allclose(tm.sum(1), torch.ones(4))
    assert torch.allclose(xm[0], torch.full_like(xm[0], lam * 0 + (1 - lam) * 3))
    xc, tc, lam_c = cutmix(x, t, 1.0, _gen(3))
    pasted = (xc[0] == 3).float().mean().item()  # image 0 got pixels from image 3
    assert tc[0, 3].item() == pytest.approx(pasted) and lam_c == pytest.approx(1 - pasted)
    sm = one_hot_smooth(torch.tensor([1]), 5, 0.1)
    assert sm[0, 1].item() == pytest.approx(0.92) and sm[0, 0].item() == pytest.approx(0.02)


def test_batch_augment_is_reproducible_from_the_generator():
    ds = make_shapes(32, img_size=16, seed=0)
    aug = BatchAugment(
        (0.5,) * 3,
        (0.25,) * 3,
        10,
        16,
        crop="rrc",
        cutout=4,
        mixup_alpha=0.2,
        cutmix_alpha=1.0,
        label_smoothing=0.1,
    )
    a = aug(ds.images, ds.labels, _gen(7))
    b = aug(ds.images, ds.labels, _gen(7))
    c = aug(ds.images, ds.labels, _gen(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert a[0].shape == (32, 3, 16, 16) and a[1].shape == (32, 10)
    with pytest.raises(ValueError, match="crop must be"):
        BatchAugment((0.5,), (0.2,), 2, 8, crop="centre")


def test_loader_order_depends_only_on_seed_and_epoch():
    ds = make_shapes(50, img_size=8, seed=0)
    loader = BatchLoader(ds, 16, seed=4)
    assert len(loader) == 3
    full = [y for _, y in loader.batches(2)]
    tail = [y for _, y in loader.batches(2, start=1)]
    assert all(torch.equal(a, b) for a, b in zip(full[1:], tail))
    assert not torch.equal(torch.cat(full), torch.cat([y for _, y in loader.batches(3)]))
