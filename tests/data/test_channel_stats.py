"""channel_stats: float64 mean/std in bounded chunks, against a numpy reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from archbench.data import base
from archbench.data.base import channel_stats


def _images(n: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, size=(n, c, h, w), dtype=np.uint8))


def _numpy_reference(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """mean = sum(x) / n, std = sqrt(sum(x^2) / n - mean^2) per channel, x = pixel / 255."""
    x = images.numpy().astype(np.float64) / 255.0
    n = x.shape[0] * x.shape[2] * x.shape[3]
    mean = x.sum(axis=(0, 2, 3)) / n
    std = np.sqrt((x * x).sum(axis=(0, 2, 3)) / n - mean * mean)
    return mean, std


class _SplitSpy(torch.Tensor):
    """A tensor that records the chunk sizes it is split into."""

    sizes: list[int] = []

    def split(self, split_size, dim=0):  # type: ignore[override]
        _SplitSpy.sizes.append(int(split_size))
        return super().split(split_size, dim)


def _chunk_sizes(images: torch.Tensor) -> list[int]:
    _SplitSpy.sizes = []
    channel_stats(images.as_subclass(_SplitSpy))
    return list(_SplitSpy.sizes)


@pytest.mark.parametrize(
    ("shape", "limit", "per_chunk"),
    [
        # 3x8x8 = 192 values: limit 1000 gives 5 images a chunk (the small-chunk path)
        ((23, 3, 8, 8), 1000, 5),
        # 2x10x10 = 200 values, one image over the limit: one image a chunk
        ((7, 2, 10, 10), 150, 1),
        # tiny images, limit far above: capped at 4096 images (the 32x32 path)
        ((4100, 1, 2, 2), 2**24, 4096),
    ],
)
def test_matches_numpy_float64_reference(monkeypatch, shape, limit, per_chunk):
    monkeypatch.setattr(base, "_STATS_CHUNK_ELEMENTS", limit)
    images = _images(*shape, seed=sum(shape))
    assert _chunk_sizes(images) == [per_chunk]
    mean, std = channel_stats(images)
    ref_mean, ref_std = _numpy_reference(images)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-12, atol=0)
    np.testing.assert_allclose(std, ref_std, rtol=1e-10, atol=0)


def test_chunk_memory_is_bounded_at_real_sizes():
    # 3x224x224 = 150528 values: 2**24 // 150528 = 111 images (~134 MB of float64)
    assert _chunk_sizes(torch.zeros(2, 3, 224, 224, dtype=torch.uint8)) == [111]
    # 3x32x32 = 3072 values: 5461 would fit, the 4096-image cap of earlier versions holds
    assert _chunk_sizes(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)) == [4096]


def test_small_images_keep_earlier_sums_bit_for_bit():
    """Up to 3x32x32 the sums are those of 4096-image float64 chunks, as before."""
    images = _images(4100, 3, 4, 4, seed=3)
    s = torch.zeros(3, dtype=torch.float64)
    s2 = torch.zeros(3, dtype=torch.float64)
    for chunk in images.split(4096):
        x = chunk.double() / 255.0
        s += x.sum(dim=(0, 2, 3))
        s2 += (x * x).sum(dim=(0, 2, 3))
    n = 4100 * 4 * 4
    mean = s / n
    std = (s2 / n - mean * mean).sqrt()
    got_mean, got_std = channel_stats(images)
    assert got_mean == tuple(float(m) for m in mean)
    assert got_std == tuple(float(v) for v in std)


def test_empty_and_constant_images():
    assert channel_stats(torch.zeros(0, 3, 8, 8, dtype=torch.uint8)) == (
        (0.5, 0.5, 0.5),
        (0.25, 0.25, 0.25),
    )
    mean, std = channel_stats(torch.full((5, 1, 3, 3), 51, dtype=torch.uint8))
    assert mean == pytest.approx((0.2,), rel=1e-12)
    assert std == (1e-3,)  # floor for a constant channel
