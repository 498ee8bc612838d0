"""Real-data loaders: scikit-learn ``digits``, image folders, CIFAR python batches, ``.npz``.

None of them downloads anything. Every loader returns a :class:`DataBundle` with uint8
images resized to one square size, a stratified seeded train/val(/test) split when the
data has none, and per-channel mean/std measured on the training split.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .base import DataBundle, ImageTensorDataset, channel_stats, parse_options, split_indices

__all__ = ["load_cifar", "load_digits", "load_folder", "load_npz"]

_SPLIT = dict(val_frac=0.1, test_frac=0.1)


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear (antialiased) resize of uint8 NCHW images to ``size`` x ``size``."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = []
    for chunk in images.split(2048):
        x = F.interpolate(
            chunk.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
        out.append(x.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out) if out else images.new_zeros((0, images.shape[1], size, size))


def _channels(images: torch.Tensor, channels: int, name: str) -> torch.Tensor:
    c = images.shape[1]
    if channels == 0 or channels == c:
        return images
    if channels == 3 and c == 1:
        return images.expand(-1, 3, -1, -1).contiguous()
    if channels == 1 and c == 3:
        w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (images.float() * w).sum(1, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)
    raise ValueError(f"{name}: channels must be 1 or 3 (or 0 to keep {c}), got {channels}")


def _bundle(
    name: str,
    spec: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    class_names: list[str],
    o: dict[str, Any],
    seed: int,
    test: tuple[torch.Tensor, torch.Tensor] | None = None,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    info: dict[str, Any] | None = None,
    mirror_invariant: bool | None = None,
) -> DataBundle:
    """Resize, convert channels, split what has no split, and measure mean/std.

    ``mirror_invariant``: None takes the spec's ``flip`` option (default off)."""
    size = o["img_size"] or images.shape[-1]

    def prep(x: torch.Tensor) -> torch.Tensor:
        return _channels(_resize(x, size), o.get("channels", 0), name)

    full = ImageTensorDataset(prep(images), labels)
    split_info: dict[str, Any] = {}
    if val is None:
        fracs = [o["val_frac"]] + ([] if test is not None else [o["test_frac"]])
        parts = split_indices(full.labels, fracs, seed)
        train_ds, val_ds = full.subset(parts[0]), full.subset(parts[1])
        test_ds = full.subset(parts[2]) if test is None else None
        split_info["split"] = f"stratified from seed {seed}: " + ", ".join(
            f"{k}={v}" for k, v in zip(("val_frac", "test_frac"), fracs)
        )
    else:
        train_ds, val_ds, test_ds = full, ImageTensorDataset(prep(val[0]), val[1]), None
        split_info["split"] = "given by the data"
    if test is not None:
        test_ds = ImageTensorDataset(prep(test[0]), test[1])
    if test_ds is not None and len(test_ds) == 0:
        test_ds = None
    if len(train_ds) == 0 or len(val_ds) == 0:
        raise ValueError(
            f"{name}: too few images for a train/val split ({len(full)} images); "
            "add images or lower val_frac/test_frac"
        )
    mean, std = channel_stats(train_ds.images)
    return DataBundle(
        name=name,
        spec=spec,
        train=train_ds,
        val=val_ds,
        test=test_ds,
        num_classes=len(class_names),
        class_names=class_names,
        in_chans=train_ds.images.shape[1],
        img_size=size,
        mean=mean,
        std=std,
        info={"options": o, **split_info, **(info or {})},
        mirror_invariant=bool(o.get("flip")) if mirror_invariant is None else mirror_invariant,
    )


# --------------------------------------------------------------------------- digits
def load_digits(spec: str, options: str, seed: int) -> DataBundle:
    """scikit-learn's 1797 8x8 handwritten digits (values 0..16), upsampled to img_size.

    Digits are not mirror-invariant: recipes do not flip them unless ``flip=1``."""
    from sklearn.datasets import load_digits as sk_digits

    o = parse_options("digits", options, dict(img_size=32, channels=1, flip=False, **_SPLIT))
    d = sk_digits()
    x = torch.from_numpy(np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    y = torch.from_numpy(d.target.astype(np.int64))
    return _bundle(
        "digits", spec, x, y, [str(i) for i in range(10)], o, seed, info={"native_size": 8}
    )


# --------------------------------------------------------------------------- folder
def _path(name: str, o: dict[str, Any]) -> Path:
    if not o["path"]:
        raise ValueError(f"{name}: give a path, e.g. '{name}:/data/{name}'")
    p = Path(os.path.expanduser(o["path"]))
    if not p.exists():
        raise FileNotFoundError(f"{name}: path {str(p)!r} does not exist")
    return p


DECODE_ERRORS = (OSError, ValueError, SyntaxError)  # PIL's decode errors derive from these


def decode_image(data: bytes, size: int, channels: int) -> np.ndarray:
    """Encoded image bytes -> uint8 ``(size, size)`` or ``(size, size, 3)`` array.

    Palette and alpha images are composited on black, then a centre square crop is
    resized (bilinear) to ``size``. Unreadable data raises one of ``DECODE_ERRORS``.
    """
    from PIL import Image

    if not data:
        raise OSError("zero-byte file")
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
    except Image.DecompressionBombError as err:  # derives from Exception only
        raise ValueError(str(err)) from None
    with im:
        if im.mode in ("RGBA", "LA", "P", "PA"):
            im = im.convert("RGBA")
            bgd = Image.new("RGBA", im.size, (0, 0, 0, 255))
            im = Image.alpha_composite(bgd, im)
        im = im.convert("L" if channels == 1 else "RGB")
        w, h = im.size
        s = min(w, h)  # centre square crop, then resize
        im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
        im = im.resize((size, size), Image.BILINEAR)
        return np.asarray(im, dtype=np.uint8)


def _read_class_dirs(
    root: Path, size: int, channels: int, strict: bool
) -> tuple[torch.Tensor, torch.Tensor, list[str], dict[str, Any]]:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ValueError(
            f"folder: no class folders in {str(root)!r}; expected root/<class>/<image> "
            "(or root/train/<class>/<image> with root/val/...)"
        )
    images, labels, skipped, empty = [], [], [], []
    for k, cls in enumerate(classes):
        files = sorted(
            f for f in (root / cls).rglob("*") if f.is_file() and not f.name.startswith(".")
        )
        n_ok = 0
        for f in files:
            try:
                arr = decode_image(f.read_bytes(), size, channels)
            except DECODE_ERRORS as err:
                if strict:
                    raise ValueError(f"folder: cannot read image {str(f)!r}: {err}") from None
                skipped.append(f"{f}: {type(err).__name__}: {err}")
                continue
            arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
            images.append(torch.from_numpy(arr.copy()))
            labels.append(k)
            n_ok += 1
        if n_ok == 0:
            empty.append(cls)
    if empty:
        raise ValueError(
            f"folder: class folder(s) with no readable image in {str(root)!r}: {', '.join(empty)}"
            + (f" ({len(skipped)} unreadable file(s) skipped)" if skipped else "")
        )
    info = {"skipped_files": len(skipped), "skipped_examples": skipped[:5]}
    return torch.stack(images), torch.tensor(labels), classes, info


def load_folder(spec: str, options: str, seed: int) -> DataBundle:
    """``root/<class>/<image>``; or ``root/train|val|test/<class>/<image>`` when split.

    Grayscale, palette and RGBA images are converted (alpha composited on black);
    unreadable files (corrupt, truncated, zero-byte, not an image) are skipped and
    counted in ``describe()['skipped_files']``, or fail the load with ``strict=1``.
    Horizontal flips are not assumed to keep the class: ``flip=1`` declares that they do.
    """
    o = parse_options(
        "folder",
        options,
        dict(path="", img_size=32, channels=3, strict=False, flip=False, **_SPLIT),
        "path",
    )
    root = _path("folder", o)
    if not root.is_dir():
        raise ValueError(f"folder: {str(root)!r} is not a directory")
    if o["channels"] not in (1, 3):
        raise ValueError(f"folder: channels must be 1 or 3, got {o['channels']}")
    args = (o["img_size"], o["channels"], o["strict"])
    if (root / "train").is_dir() and ((root / "val").is_dir() or (root / "test").is_dir()):
        x, y, classes, info = _read_class_dirs(root / "train", *args)
        splits = {}
        for part in ("val", "test"):
            if (root / part).is_dir():
                px, py, pc, pinfo = _read_class_dirs(root / part, *args)
                if pc != classes:
                    raise ValueError(
                        f"folder: classes in {part}/ {pc} differ from train/ {classes}"
                    )
                splits[part] = (px, py)
                info["skipped_files"] += pinfo["skipped_files"]
                info["skipped_examples"] += pinfo["skipped_examples"]
        return _bundle(
            "folder",
            spec,
            x,
            y,
            classes,
            o,
            seed,
            test=splits.get("test"),
            val=splits.get("val"),
            info=info,
        )
    x, y, classes, info = _read_class_dirs(root, *args)
    return _bundle("folder", spec, x, y, classes, o, seed, info=info)


# --------------------------------------------------------------------------- cifar
class _ArrayUnpickler(pickle.Unpickler):
    """Reads CIFAR's python batches: plain containers and numpy arrays, nothing else."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")


def _read_batch(path: Path) -> tuple[np.ndarray, list[int]]:
    try:
        with open(path, "rb") as f:
            d = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as err:
        raise ValueError(f"cifar: cannot read batch {str(path)!r}: {err}") from None
    d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
    labels = d.get("labels", d.get("fine_labels"))
    if "data" not in d or labels is None:
        raise ValueError(f"cifar: {str(path)!r} has no 'data' and 'labels'/'fine_labels' entries")
    return np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32), list(labels)


def load_cifar(spec: str, options: str, seed: int, variant: str = "cifar10") -> DataBundle:
    """CIFAR-10/100 python batches (``cifar-10-batches-py`` / ``cifar-100-python``)."""
    o = parse_options(
        variant, options, dict(path="", img_size=32, channels=3, val_frac=0.1), "path"
    )
    root = _path(variant, o)
    if variant == "cifar10":
        sub, train_files, test_file, meta, key = (
            "cifar-10-batches-py",
            [f"data_batch_{i}" for i in range(1, 6)],
            "test_batch",
            "batches.meta",
            b"label_names",
        )
    else:
        sub, train_files, test_file, meta, key = (
            "cifar-100-python",
            ["train"],
            "test",
            "meta",
            b"fine_label_names",
        )
    if (root / sub).is_dir():
        root = root / sub
    missing = [f for f in [*train_files, test_file] if not (root / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{variant}: missing {', '.join(missing)} in {str(root)!r}; expected the python "
            f"batches ({sub}/{train_files[0]}, ..., {test_file})"
        )
    parts = [_read_batch(root / f) for f in train_files]
    x = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    y = torch.tensor([label for p in parts for label in p[1]])
    tx, ty = _read_batch(root / test_file)
    n_classes = 10 if variant == "cifar10" else 100
    names = [str(i) for i in range(n_classes)]
    if (root / meta).is_file():
        with open(root / meta, "rb") as f:
            m = _ArrayUnpickler(f, encoding="bytes").load()
        if key in m:
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in m[key]]
    o["test_frac"] = 0.0
    return _bundle(
        variant,
        spec,
        x,
        y,
        names,
        o,
        seed,
        test=(torch.from_numpy(tx), torch.tensor(ty)),
        mirror_invariant=True,  # natural photographs: a mirrored car is still a car
    )


# --------------------------------------------------------------------------- npz
def _to_nchw(a: np.ndarray, name: str) -> torch.Tensor:
    if a.ndim == 3:
        a = a[:, None]
    if a.ndim != 4:
        raise ValueError(
            f"npz: {name} must have shape (N, H, W), (N, H, W, C) or (N, C, H, W), got {a.shape}"
        )
    if a.shape[-1] in (1, 3) and a.shape[1] not in (1, 3):
        a = a.transpose(0, 3, 1, 2)
    if a.shape[1] not in (1, 3):
        raise ValueError(f"npz: {name} must have 1 or 3 channels, got shape {a.shape}")
    if a.dtype != np.uint8:
        a = a.astype(np.float64)
        if a.max(initial=0) <= 1.0 + 1e-6:
            a = a * 255.0
        a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    return torch.from_numpy(np.ascontiguousarray(a))


def load_npz(spec: str, options: str, seed: int) -> DataBundle:
    """Arrays ``x``/``y`` (or ``images``/``labels``), optionally ``x_val``/``x_test`` ...

    Images may be uint8 (0..255) or float (0..1); NHWC, NCHW or NHW. Loaded with
    ``allow_pickle=False``. Flips are not assumed to keep the class unless ``flip=1``.
    """
    o = parse_options(
        "npz", options, dict(path="", img_size=0, channels=0, flip=False, **_SPLIT), "path"
    )
    p = _path("npz", o)
    try:
        z = np.load(p, allow_pickle=False)
    except Exception as err:
        raise ValueError(f"npz: cannot read {str(p)!r} as a numpy .npz archive: {err}") from None
    keys = set(z.files)

    def pair(suffix: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        for xk, yk in (("x", "y"), ("images", "labels"), ("X", "y")):
            if f"{xk}{suffix}" in keys and f"{yk}{suffix}" in keys:
                x = _to_nchw(z[f"{xk}{suffix}"], f"{xk}{suffix}")
                y = np.asarray(z[f"{yk}{suffix}"])
                if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
                    raise ValueError(
                        f"npz: {yk}{suffix} must be {len(x)} integer labels, got {y.dtype} {y.shape}"
                    )
                return x, torch.from_numpy(y.astype(np.int64))
        return None

    train = pair("") or pair("_train")
    if train is None:
        raise ValueError(
            f"npz: {str(p)!r} has arrays {sorted(keys)}; expected 'x' and 'y' (or 'images' and "
            "'labels', or 'x_train' and 'y_train'), optionally 'x_val'/'y_val' and 'x_test'/'y_test'"
        )
    val, test = pair("_val"), pair("_test")
    labels_all = torch.cat([t[1] for t in (train, val, test) if t is not None])
    if labels_all.min() < 0:
        raise ValueError("npz: labels must be >= 0")
    n_classes = int(labels_all.max()) + 1
    names = (
        [str(z["class_names"][i]) for i in range(n_classes)]
        if "class_names" in keys
        else [str(i) for i in range(n_classes)]
    )
    return _bundle("npz", spec, train[0], train[1], names, o, seed, test=test, val=val)
