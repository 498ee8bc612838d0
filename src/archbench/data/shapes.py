"""``shapes``: a procedural image-classification set, deterministic from a seed.

Each image holds one main object on a cluttered background. The class is a *pair*
(global shape, local texture): five shapes (circle, square, triangle, plus, ring) and
four textures (solid, stripes, checker, dots). Classes are laid out so that each shape
occurs with two or more textures and each texture with two or more shapes, so neither a
pure shape detector nor a pure texture detector can solve the task; a model must see the
outline *and* the fine pattern inside it. The solid texture has the same mean colour as
the patterned ones, so mean colour carries no class signal.

Variation: object position, scale and rotation, random object and background colours,
a background gradient, pixel noise and small distractor objects (``clutter``) with their
own textures. The object mask of every image is kept (``dataset.masks``) for explanation
methods to be scored against.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .base import DataBundle, ImageTensorDataset, channel_stats, parse_options

__all__ = ["SHAPES", "TEXTURES", "load_shapes", "make_shapes", "shapes_class_table"]

SHAPES = ("circle", "square", "triangle", "plus", "ring")
TEXTURES = ("solid", "stripes", "checker", "dots")
MAX_CLASSES = len(SHAPES) * len(TEXTURES)

DEFAULTS = dict(
    num_classes=10,
    img_size=32,
    n_train=5000,
    n_val=1000,
    n_test=1000,
    clutter=3,
    noise=0.04,
)


def shapes_class_table(num_classes: int) -> list[tuple[str, str]]:
    """(shape, texture) of each class. Class k has shape k % 5 and texture (k//5 + k%5) % 4."""
    if not 2 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"shapes: num_classes must be in 2..{MAX_CLASSES}, got {num_classes}")
    table = []
    for k in range(num_classes):
        s = k % len(SHAPES)
        t = (k // len(SHAPES) + s) % len(TEXTURES)
        table.append((SHAPES[s], TEXTURES[t]))
    return table


def _sdf(shape: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance (object units, negative inside) of each image's shape id."""
    r = np.sqrt(u * u + v * v)
    out = np.empty_like(u)
    k = shape[:, None, None] if u.ndim == 3 else shape
    c = np.broadcast_to(k, u.shape)
    h = math.sqrt(3) / 2
    candidates = {
        0: r - 0.85,
        1: np.maximum(np.abs(u), np.abs(v)) - 0.72,
        2: np.maximum.reduce([-v - 0.45, h * u + 0.5 * v - 0.45, -h * u + 0.5 * v - 0.45]),
        3: np.minimum(
            np.maximum(np.abs(u) - 0.88, np.abs(v) - 0.3),
            np.maximum(np.abs(u) - 0.3, np.abs(v) - 0.88),
        ),
        4: np.abs(r - 0.62) - 0.26,
    }
    for sid, d in candidates.items():
        sel = c == sid
        out[sel] = d[sel]
    return out


def _texture(tex: np.ndarray, tu: np.ndarray, tv: np.ndarray, period: np.ndarray) -> np.ndarray:
    """Pattern value in [0, 1] (pixel-unit object coordinates); solid is a flat 0.5."""
    w = 2 * np.pi / period[:, None, None]
    su, sv = np.sin(w * tu), np.sin(w * tv)
    du = np.mod(tu, period[:, None, None]) / period[:, None, None] - 0.5
    dv = np.mod(tv, period[:, None, None]) / period[:, None, None] - 0.5
    pats = {
        0: np.full_like(tu, 0.5),
        1: 0.5 + 0.5 * np.tanh(3 * su),
        2: 0.5 + 0.5 * np.tanh(3 * su * sv * 2),
        3: 1.0 / (1.0 + np.exp(40 * (du * du + dv * dv - 0.09))),
    }
    out = np.empty_like(tu)
    c = np.broadcast_to(tex[:, None, None], tu.shape)
    for tid, p in pats.items():
        sel = c == tid
        out[sel] = p[sel]
    return out


def _render(
    rng: np.random.Generator,
    shape: np.ndarray,
    texture: np.ndarray,
    size: int,
    clutter: int,
    noise: float,
) -> tuple[np.ndarray, np.ndarray]:
    n = len(shape)
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    py, px = np.meshgrid(coords, coords, indexing="ij")
    px, py = px[None], py[None]
    half = size / 2  # pixels per unit

    def local(cx, cy, scale, theta):
        cos, sin = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
        dx, dy = px - cx[:, None, None], py - cy[:, None, None]
        s = scale[:, None, None]
        return (cos * dx + sin * dy) / s, (-sin * dx + cos * dy) / s

    # Background: dark colour with a linear gradient.
    bg = rng.uniform(0.0, 0.45, (n, 3)).astype(np.float32)
    gdir = rng.uniform(0, 2 * np.pi, n)
    gamp = rng.uniform(0.0, 0.25, n)
    ramp = (np.cos(gdir)[:, None, None] * px + np.sin(gdir)[:, None, None] * py) * gamp[
        :, None, None
    ]
    img = bg[:, :, None, None] + ramp[:, None]

    def paint(img, alpha, colour_a, colour_b, pattern):
        col = colour_a[:, :, None, None] * pattern[:, None] + colour_b[:, :, None, None] * (
            1 - pattern[:, None]
        )
        return img * (1 - alpha[:, None]) + col * alpha[:, None]

    # Distractors: small textured blobs, drawn behind the main object.
    for _ in range(clutter):
        cx, cy = rng.uniform(-1, 1, n), rng.uniform(-1, 1, n)
        sc = rng.uniform(0.1, 0.2, n)
        th = rng.uniform(0, 2 * np.pi, n)
        u, v = local(cx, cy, sc, th)
        d = _sdf(rng.integers(0, 4, n), u, v)
        alpha = np.clip(0.5 - d * sc[:, None, None] * half, 0, 1)
        ca = rng.uniform(0.2, 1.0, (n, 3)).astype(np.float32)
        pat = _texture(
            rng.integers(0, 4, n),
            u * sc[:, None, None] * half,
            v * sc[:, None, None] * half,
            rng.uniform(3.5, 5, n),
        )
        img = paint(img, alpha * rng.uniform(0.5, 1.0, n)[:, None, None], ca, ca * 0.35, pat)

    # Main object.
    cx, cy = rng.uniform(-0.4, 0.4, n), rng.uniform(-0.4, 0.4, n)
    sc = rng.uniform(0.38, 0.62, n)
    th = rng.uniform(0, 2 * np.pi, n)
    u, v = local(cx, cy, sc, th)
    d = _sdf(shape, u, v)
    alpha = np.clip(0.5 - d * sc[:, None, None] * half, 0, 1)
    c1 = rng.uniform(0.55, 1.0, (n, 3)).astype(np.float32)
    pat = _texture(
        texture, u * sc[:, None, None] * half, v * sc[:, None, None] * half, rng.uniform(3.5, 5, n)
    )
    img = paint(img, alpha, c1, c1 * 0.3, pat)

    img = img + rng.normal(0, noise, img.shape).astype(np.float32)
    out = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    return out, alpha > 0.5


def make_shapes(
    n: int,
    num_classes: int = 10,
    img_size: int = 32,
    seed: int = 0,
    clutter: int = 3,
    noise: float = 0.04,
) -> ImageTensorDataset:
    """``n`` images, labels balanced over ``num_classes``, object masks included."""
    if img_size < 8:
        raise ValueError(f"shapes: img_size must be >= 8, got {img_size}")
    if n < 0 or clutter < 0 or noise < 0:
        raise ValueError("shapes: n, clutter and noise must be >= 0")
    table = shapes_class_table(num_classes)
    rng = np.random.default_rng([int(seed), 0x5EA9E5])
    labels = rng.permutation(np.arange(n) % num_classes)
    shape_id = np.array([SHAPES.index(table[k][0]) for k in range(num_classes)])[labels]
    tex_id = np.array([TEXTURES.index(table[k][1]) for k in range(num_classes)])[labels]
    images = np.zeros((n, 3, img_size, img_size), np.uint8)
    masks = np.zeros((n, img_size, img_size), bool)
    chunk = max(1, 2**20 // (img_size * img_size))
    for start in range(0, n, chunk):
        sl = slice(start, start + chunk)
        sub = np.random.default_rng([int(seed), 0x5EA9E5, start])
        images[sl], masks[sl] = _render(sub, shape_id[sl], tex_id[sl], img_size, clutter, noise)
    return ImageTensorDataset(
        torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)), torch.from_numpy(masks)
    )


def load_shapes(spec: str, options: str, seed: int) -> DataBundle:
    o = parse_options("shapes", options, DEFAULTS)
    table = shapes_class_table(o["num_classes"])
    kw = dict(
        num_classes=o["num_classes"], img_size=o["img_size"], clutter=o["clutter"], noise=o["noise"]
    )
    # Three disjoint seed streams: one per split.
    train = make_shapes(o["n_train"], seed=3 * seed, **kw)
    val = make_shapes(o["n_val"], seed=3 * seed + 1, **kw)
    test = make_shapes(o["n_test"], seed=3 * seed + 2, **kw)
    if len(train) == 0 or len(val) == 0:
        raise ValueError("shapes: n_train and n_val must be > 0")
    mean, std = channel_stats(train.images)
    return DataBundle(
        name="shapes",
        spec=spec,
        train=train,
        val=val,
        test=test,
        num_classes=o["num_classes"],
        class_names=[f"{s}-{t}" for s, t in table],
        in_chans=3,
        img_size=o["img_size"],
        mean=mean,
        std=std,
        info={"options": o, "has_masks": True},
    )
