"""Batched augmentations for self-supervised methods.

Every function takes float images ``(B, C, H, W)`` in [0, 1] (``to_unit`` turns the uint8
``batch.raw`` into that), draws its per-sample parameters as tensors from the
``torch.Generator`` passed in, and transforms the whole batch in a few vectorized calls.
Normalize last, with the dataset's mean/std (``normalizer(data)``), as the engine does.

- colour jitter (brightness, contrast, saturation, hue), random grayscale, Gaussian blur and
  solarization: the SimCLR (Chen et al., 2020) / BYOL (Grill et al., 2020) distortions;
- random resized crop (:func:`archbench.data.transforms.random_resized_crop`) and
  multi-crop (SwAV, Caron et al., 2020: two global views plus several small ones);
- rotations by multiples of 90 degrees (RotNet, Gidaris et al., 2018);
- patch grids, jigsaw shuffling (Noroozi & Favaro, 2016) and random patch masking
  (exactly ``round(ratio * N)`` masked patches per image, as MAE/SparK sample them).

Why not torchvision/kornia: torchvision cannot be imported with the CPU torch build
archbench uses, and kornia's ops draw from the global RNG rather than a generator passed
in, which breaks the bit-exact resume of the training loop.

Deviation: colour jitter applies its four operations in one random order per batch
(torchvision draws an order per call of one image); hue is rotated in YIQ space, a
linear approximation of the HSV hue shift, so it stays one matrix product per image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data.transforms import normalize, random_resized_crop

__all__ = [
    "Normalizer",
    "SimCLRAugment",
    "color_jitter",
    "gaussian_blur",
    "grayscale",
    "mask_patches",
    "multi_crop",
    "normalizer",
    "patch_jigsaw",
    "patchify",
    "random_mask",
    "random_resized_crop",
    "rotate90",
    "rotation_batch",
    "solarize",
    "to_unit",
    "unpatchify",
]

_LUMA = (0.299, 0.587, 0.114)


def _rand(n: int, g: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=g).to(device)


def _uniform(
    n: int, lo: float, hi: float, g: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    return lo + (hi - lo) * _rand(n, g, device)


def _check_images(x: torch.Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{what} expects images (B, C, H, W), got {shape}")
    if not x.is_floating_point():
        raise TypeError(f"{what} expects float images in [0, 1]; convert uint8 with to_unit(x)")


def _check_p(p: float, what: str) -> None:
    if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"{what}: probability p must be in [0, 1], got {p}")


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [0, 1]; float images are returned as they are."""
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    if not x.is_floating_point():
        raise TypeError(f"images must be uint8 or float, got {x.dtype}")
    return x


def _gray(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) luma of RGB images (the image itself when it has one channel)."""
    if x.shape[1] == 1:
        return x
    if x.shape[1] != 3:
        return x.mean(1, keepdim=True)
    w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def grayscale(
    x: torch.Tensor, p: float = 0.2, generator: torch.Generator | None = None
) -> torch.Tensor:
    """With probability ``p`` per image, replace every channel with the luma
    (0.299 R + 0.587 G + 0.114 B). Single-channel images are unchanged."""
    _check_images(x, "grayscale")
    _check_p(p, "grayscale")
    apply = (_rand(x.shape[0], generator, x.device) < p).view(-1, 1, 1, 1)
    return torch.where(apply, _gray(x).expand_as(x), x)


def _hue_rotate(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate the chroma plane of YIQ by ``angle`` (radians, one per image)."""
    to_yiq = torch.tensor(
        [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
        dtype=x.dtype,
        device=x.device,
    )
    from_yiq = torch.linalg.inv(to_yiq)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.zeros(x.shape[0], 3, 3, dtype=x.dtype, device=x.device)
    rot[:, 0, 0] = 1.0
    rot[:, 1, 1], rot[:, 1, 2] = cos, -sin
    rot[:, 2, 1], rot[:, 2, 2] = sin, cos
    m = from_yiq @ rot @ to_yiq  # (B, 3, 3)
    return torch.einsum("bij,bjhw->bihw", m, x)


def color_jitter(
    x: torch.Tensor,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
    hue: float = 0.1,
    p: float = 0.8,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """With probability ``p`` per image: scale brightness by ``U(1-b, 1+b)``, contrast
    (around the image's mean luma) by ``U(1-c, 1+c)``, saturation (around each pixel's
    luma) by ``U(1-s, 1+s)`` and rotate hue by ``U(-h, h)`` turns, in one random order per
    batch, clamping to [0, 1] after each. Saturation and hue need 3 channels."""
    _check_images(x, "color_jitter")
    _check_p(p, "color_jitter")
    for name, v in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"color_jitter: {name} must be in [0, 1], got {v}")
    if not 0.0 <= hue <= 0.5:
        raise ValueError(f"color_jitter: hue must be in [0, 0.5], got {hue}")
    b, dev = x.shape[0], x.device
    fb = _uniform(b, 1 - brightness, 1 + brightness, generator, dev).view(-1, 1, 1, 1)
    fc = _uniform(b, 1 - contrast, 1 + contrast, generator, dev).view(-1, 1, 1, 1)
    fs = _uniform(b, 1 - saturation, 1 + saturation, generator, dev).view(-1, 1, 1, 1)
    fh = _uniform(b, -hue, hue, generator, dev) * (2 * math.pi)
    apply = (_rand(b, generator, dev) < p).view(-1, 1, 1, 1)
    order = torch.randperm(4, generator=generator).tolist()
    rgb = x.shape[1] == 3
    out = x
    for op in order:
        if op == 0 and brightness > 0:
            out = (out * fb).clamp(0, 1)
        elif op == 1 and contrast > 0:
            m = _gray(out).mean(dim=(1, 2, 3), keepdim=True)
            out = ((out - m) * fc + m).clamp(0, 1)
        elif op == 2 and saturation > 0 and rgb:
            g = _gray(out)
            out = ((out - g) * fs + g).clamp(0, 1)
        elif op == 3 and hue > 0 and rgb:
            out = _hue_rotate(out, fh).clamp(0, 1)
    return torch.where(apply, out, x)


def gaussian_blur(
    x: torch.Tensor,
    sigma: tuple[float, float] = (0.1, 2.0),
    p: float = 0.5,
    kernel_size: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """With probability ``p`` per image, blur with a separable Gaussian of standard
    deviation ``U(sigma)`` pixels (one per image). ``kernel_size`` defaults to the odd
    number nearest 10% of the image side (SimCLR), at least 3; borders are reflected."""
    _check_images(x, "gaussian_blur")
    _check_p(p, "gaussian_blur")
    if not 0 < sigma[0] <= sigma[1]:
        raise ValueError(
            f"gaussian_blur: sigma must be (low, high) with 0 < low <= high, got {sigma}"
        )
    b, c, h, w = x.shape
    if kernel_size is None:
        kernel_size = max(3, int(round(0.1 * min(h, w))) // 2 * 2 + 1)
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"gaussian_blur: kernel_size must be odd and positive, got {kernel_size}")
    r = kernel_size // 2
    if r >= min(h, w):
        raise ValueError(
            f"gaussian_blur: kernel_size {kernel_size} too large for {h}x{w} images; "
            f"use at most {2 * min(h, w) - 1}"
        )
    s = _uniform(b, sigma[0], sigma[1], generator, x.device)
    apply = (_rand(b, generator, x.device) < p).view(-1, 1, 1, 1)
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(t.view(1, -1) ** 2) / (2 * s.view(-1, 1).to(x.dtype) ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, dim=0)  # (B*C, K)
    y = x.reshape(1, b * c, h, w)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="reflect"), k.view(b * c, 1, 1, -1), groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="reflect"), k.view(b * c, 1, -1, 1), groups=b * c)
    return torch.where(apply, y.view(b, c, h, w), x)


def solarize(
    x: torch.Tensor,
    threshold: float = 0.5,
    p: float = 0.2,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """With probability ``p`` per image, invert every pixel at or above ``threshold``
    (``v -> 1 - v``), as BYOL's second view does."""
    _check_images(x, "solarize")
    _check_p(p, "solarize")
    apply = (_rand(x.shape[0], generator, x.device) < p).view(-1, 1, 1, 1)
    return torch.where(apply & (x >= threshold), 1.0 - x, x)


def multi_crop(
    x: torch.Tensor,
    sizes: Sequence[int] = (32, 16),
    counts: Sequence[int] = (2, 4),
    scales: Sequence[tuple[float, float]] = ((0.14, 1.0), (0.05, 0.14)),
    hflip: float = 0.5,
    generator: torch.Generator | None = None,
) -> list[torch.Tensor]:
    """SwAV's multi-crop: ``counts[i]`` random resized crops of side ``sizes[i]`` with
    area share in ``scales[i]``, for each resolution in turn (global views first).
    Returns ``sum(counts)`` tensors."""
    _check_images(x, "multi_crop")
    if not (len(sizes) == len(counts) == len(scales)) or not sizes:
        raise ValueError(
            "multi_crop: sizes, counts and scales need one entry per resolution, got "
            f"{len(sizes)}, {len(counts)} and {len(scales)}"
        )
    if any(int(n) < 0 for n in counts) or any(int(s) < 1 for s in sizes):
        raise ValueError(f"multi_crop: sizes must be >= 1 and counts >= 0, got {sizes}, {counts}")
    views: list[torch.Tensor] = []
    for size, n, scale in zip(sizes, counts, scales):
        for _ in range(int(n)):
            views.append(
                random_resized_crop(x, int(size), tuple(scale), hflip=hflip, generator=generator)
            )
    return views


def rotate90(x: torch.Tensor, k: torch.Tensor | int) -> torch.Tensor:
    """Rotate each image counter-clockwise by ``k * 90`` degrees (``k`` an int or a (B,)
    tensor of values in 0..3). Square images only when ``k`` varies."""
    if isinstance(k, int):
        return torch.rot90(x, k % 4, dims=(-2, -1))
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(
            f"rotate90 with per-image angles needs square images, got {tuple(x.shape[-2:])}"
        )
    k = k.to(x.device).long().remainder(4).view(-1, *([1] * (x.ndim - 1)))
    out = x
    for r in (1, 2, 3):
        out = torch.where(k == r, torch.rot90(x, r, dims=(-2, -1)), out)
    return out


def rotation_batch(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RotNet's batch: every image at 0, 90, 180 and 270 degrees, ``(4B, C, H, W)``, and
    the rotation labels ``(4B,)`` (0..3), ordered rotation-major."""
    views = [torch.rot90(x, r, dims=(-2, -1)) for r in range(4)]
    labels = torch.arange(4, device=x.device).repeat_interleave(x.shape[0])
    return torch.cat(views), labels


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, C, patch, patch), patches in row-major order."""
    b, c, h, w = x.shape
    if h % patch or w % patch:
        raise ValueError(f"image side {h}x{w} is not a multiple of the patch size {patch}")
    gh, gw = h // patch, w // patch
    y = x.view(b, c, gh, patch, gw, patch).permute(0, 2, 4, 1, 3, 5)
    return y.reshape(b, gh * gw, c, patch, patch)


def unpatchify(p: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`patchify`: (B, N, C, p, p) on a ``grid`` (rows, cols) -> images."""
    b, n, c, ph, pw = p.shape
    gh, gw = grid
    if gh * gw != n:
        raise ValueError(f"{n} patches do not fill a {gh}x{gw} grid")
    y = p.view(b, gh, gw, c, ph, pw).permute(0, 3, 1, 4, 2, 5)
    return y.reshape(b, c, gh * ph, gw * pw)


def patch_jigsaw(
    x: torch.Tensor,
    grid: int = 2,
    permutations: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut each image into ``grid x grid`` tiles and shuffle them. With ``permutations``
    (P, grid*grid) each image takes one row of it (a jigsaw class); otherwise every image
    gets its own random permutation. Returns the shuffled images and, per image, the
    permutation index (with a set) or the permutation itself (B, grid*grid): tile ``j``
    of the output is tile ``perm[j]`` of the input."""
    _check_images(x, "patch_jigsaw")
    b, _, h, w = x.shape
    if grid < 1 or h % grid or w % grid or h != w:
        raise ValueError(
            f"patch_jigsaw: a square image side divisible by grid={grid} is needed, got {h}x{w}"
        )
    n = grid * grid
    tiles = patchify(x, h // grid)
    if permutations is not None:
        if permutations.ndim != 2 or permutations.shape[1] != n:
            raise ValueError(
                f"patch_jigsaw: permutations must be (P, {n}), got {tuple(permutations.shape)}"
            )
        label = torch.randint(0, permutations.shape[0], (b,), generator=generator).to(x.device)
        perm = permutations.to(x.device).long()[label]
    else:
        perm = torch.argsort(torch.rand(b, n, generator=generator), dim=1).to(x.device)
        label = perm
    idx = perm.view(b, n, 1, 1, 1).expand_as(tiles)
    return unpatchify(torch.gather(tiles, 1, idx), (grid, grid)), label


def random_mask(
    batch: int,
    num_patches: int,
    ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """(batch, num_patches) bool, True where masked: exactly ``round(ratio * N)`` patches
    per row, chosen uniformly without replacement."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"random_mask: ratio must be in [0, 1), got {ratio}")
    if num_patches < 1:
        raise ValueError(f"random_mask: num_patches must be >= 1, got {num_patches}")
    n_mask = int(round(ratio * num_patches))
    rank = torch.argsort(torch.argsort(torch.rand(batch, num_patches, generator=generator), 1), 1)
    return (rank < n_mask).to(device) if device is not None else rank < n_mask


def mask_patches(
    x: torch.Tensor, mask: torch.Tensor, patch: int, fill: float | torch.Tensor = 0.0
) -> torch.Tensor:
    """Set the pixels of the masked patches (``mask`` (B, N) True, row-major grid of
    ``patch`` pixels) to ``fill``."""
    b, _, h, w = x.shape
    gh, gw = h // patch, w // patch
    if h % patch or w % patch or mask.shape != (b, gh * gw):
        raise ValueError(
            f"mask_patches: a ({b}, {gh * gw}) mask for {h}x{w} images with patch {patch} "
            f"is needed, got {tuple(mask.shape)}"
        )
    pixel = mask.view(b, 1, gh, 1, gw, 1).expand(b, 1, gh, patch, gw, patch).reshape(b, 1, h, w)
    return torch.where(pixel.to(x.device), torch.as_tensor(fill, dtype=x.dtype, device=x.device), x)


@dataclass
class Normalizer:
    """Per-channel normalization with a dataset's mean and std (what the engine applies)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        m = torch.tensor(self.mean, dtype=x.dtype, device=x.device)
        s = torch.tensor(self.std, dtype=x.dtype, device=x.device)
        if m.numel() != x.shape[1]:
            raise ValueError(f"normalizer has {m.numel()} channels, images have {x.shape[1]}")
        return normalize(x, m, s)


def normalizer(data) -> Normalizer:
    """The normalization of a ``DataBundle`` (or anything with ``mean``/``std``)."""
    mean, std = getattr(data, "mean", None), getattr(data, "std", None)
    if mean is None or std is None:
        raise ValueError("the data carries no mean/std to normalize with")
    return Normalizer(tuple(float(m) for m in mean), tuple(float(s) for s in std))


@dataclass
class SimCLRAugment:
    """SimCLR's view pipeline on a batch: random resized crop + flip, colour jitter
    (strength ``s``: 0.8s, 0.8s, 0.8s, 0.2s with p=0.8), grayscale (p=0.2), optional
    Gaussian blur and solarization, then normalization. ``size=None`` keeps the input side.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: int | None = None
    scale: tuple[float, float] = (0.2, 1.0)
    strength: float = 0.5
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.0
    solarize_p: float = 0.0

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = to_unit(x)
        s = self.strength
        x = random_resized_crop(x, self.size or x.shape[-1], self.scale, generator=generator)
        x = color_jitter(x, 0.8 * s, 0.8 * s, 0.8 * s, min(0.2 * s, 0.5), self.jitter_p, generator)
        x = grayscale(x, self.gray_p, generator)
        if self.blur_p > 0:
            x = gaussian_blur(x, p=self.blur_p, generator=generator)
        if self.solarize_p > 0:
            x = solarize(x, p=self.solarize_p, generator=generator)
        return Normalizer(self.mean, self.std)(x)
