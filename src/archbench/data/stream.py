"""Datasets larger than memory: image folders and tar shards, decoded as they are read.

``folder:PATH,stream=1`` reads ``root/<class>/<image>`` (or ``root/train|val|test/...``)
and ``shards:PATH/{000000..000099}.tar`` reads tar shards in the webdataset layout (one
sample = the members that share a key, e.g. ``train/cat/0001.png`` and
``train/cat/0001.cls``), as ``archbench data pack`` writes them with webdataset's
``ShardWriter``. Shard patterns are expanded as webdataset does (brace ranges, ``::``
lists); ``shards:DIR`` takes every ``*.tar`` in the folder.

What is kept in memory is one small record per image (a path, or a shard and a byte
range) and its label; images are decoded in DataLoader worker processes
(``workers=N``, default 2), batch by batch, and augmented on the training device as
for in-memory data. So memory stays flat as the dataset grows.

Splits follow the in-memory folder loader exactly: ``train``/``val``/``test``
sub-folders (or key prefixes in shards), or a stratified seeded split by
``val_frac``/``test_frac`` of the samples in the same order (classes sorted, files
sorted). The training order of an epoch is the same seeded permutation that
:class:`archbench.data.BatchLoader` draws, so a streamed split gives the same batches,
image for image, as the in-memory split of the same data and seed (tested).

Unreadable files: an indexing pass (in the workers, memory flat) decodes every image
once, skips the unreadable ones (zero-byte, corrupt, not an image) and counts them in
``describe()['skipped_files']`` as the in-memory loader does, before the split is drawn;
the same pass measures the per-channel mean and std of the training split. A file that
becomes unreadable later is dropped from its batch and counted in
``describe()['skipped_at_read']``.

Deviation: shards are read by random access (the byte range of each member, found once
from the tar headers with :mod:`tarfile`) rather than by webdataset's sequential
pipeline with a shuffle buffer, because only random access gives the same seeded order
as the in-memory loader and exact resumption mid-epoch. webdataset writes the shards and
expands their names; local files only.
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .base import DataBundle, ImageTensorDataset, parse_options, split_indices
from .loader import BatchLoader
from .sources import DECODE_ERRORS, decode_image

__all__ = [
    "StreamLoader",
    "StreamSplit",
    "load_shards",
    "load_stream_folder",
    "make_loader",
    "pack_folder",
]

IMAGE_EXTS = ("png", "jpg", "jpeg", "bmp", "gif", "webp", "tif", "tiff", "ppm", "pgm")
_SPLIT_DEFAULTS = dict(img_size=32, channels=3, strict=False, flip=False, workers=2)
_SPLIT_DEFAULTS.update(val_frac=0.1, test_frac=0.1)


def _require_webdataset() -> Any:
    try:
        import webdataset
    except ImportError:
        raise ValueError(
            "tar shards need the webdataset package: pip install webdataset "
            "(or pip install archbench[stream])"
        ) from None
    return webdataset


# --------------------------------------------------------------------------- records
class _Records:
    """Where each sample's encoded bytes are: a file path, or (shard, offset, size)."""

    def __init__(self, paths: list[str], offsets: np.ndarray | None = None) -> None:
        self.paths = paths  # per sample (files) or per shard (shards)
        self.offsets = offsets  # (N, 3) int64: shard index, byte offset, byte size

    def __len__(self) -> int:
        return len(self.paths) if self.offsets is None else len(self.offsets)

    def read(self, i: int) -> bytes:
        if self.offsets is None:
            with open(self.paths[i], "rb") as f:
                return f.read()
        shard, offset, size = (int(v) for v in self.offsets[i])
        with open(self.paths[shard], "rb") as f:
            f.seek(offset)
            return f.read(size)

    def name(self, i: int) -> str:
        if self.offsets is None:
            return self.paths[i]
        return f"{self.paths[int(self.offsets[i, 0])]}@{int(self.offsets[i, 1])}"

    def take(self, idx: np.ndarray) -> _Records:
        if self.offsets is None:
            return _Records([self.paths[int(i)] for i in idx])
        return _Records(self.paths, self.offsets[idx])


class _Decode(torch.utils.data.Dataset):
    """Map-style view for DataLoader workers: index -> (uint8 CHW array or None, index)."""

    def __init__(self, records: _Records, size: int, channels: int) -> None:
        self.records, self.size, self.channels = records, size, channels

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[np.ndarray | None, int, str]:
        try:
            arr = decode_image(self.records.read(i), self.size, self.channels)
        except DECODE_ERRORS as err:
            return None, i, f"{self.records.name(i)}: {type(err).__name__}: {err}"
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        return np.ascontiguousarray(arr), i, ""


def _collate(items: list[tuple[np.ndarray | None, int, str]]) -> tuple[Any, ...]:
    """Numpy arrays, not tensors: a tensor from a worker comes through shared memory,
    which the receiving process does not give back, so RSS would grow by every image
    read; an array is copied through the pipe and freed as usual."""
    ok = [(a, i) for a, i, _ in items if a is not None]
    errors = [e for a, _, e in items if a is None]
    images = np.stack([a for a, _ in ok]) if ok else None
    return images, np.asarray([i for _, i in ok], dtype=np.int64), errors


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def _decoded_batches(
    dataset: _Decode, chunks: Sequence[Sequence[int]], workers: int
) -> Iterator[tuple[torch.Tensor | None, torch.Tensor, list[str]]]:
    """Decode ``chunks`` of indices in ``workers`` processes (0: in this process), in order."""
    if workers > 0 and len(chunks) > 1:
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=chunks,
            num_workers=workers,
            collate_fn=_collate,
            worker_init_fn=_worker_init,
        )
        batches = iter(loader)
    else:
        batches = (_collate([dataset[int(i)] for i in chunk]) for chunk in chunks)
    for images, idx, errors in batches:
        yield (None if images is None else torch.from_numpy(images)), torch.from_numpy(idx), errors


# --------------------------------------------------------------------------- the split
class _LazyImages:
    """``split.images`` of a streamed split: indexing decodes those images (uint8 NCHW).

    Code written for in-memory splits (a model check reading ``images[:2]``, a task
    reading a few images) works unchanged; training and evaluation read whole batches
    through the worker processes instead.
    """

    dtype = torch.uint8

    def __init__(self, split: StreamSplit) -> None:
        self.split = split

    @property
    def shape(self) -> torch.Size:
        s = self.split
        return torch.Size((len(s), s.channels, s.size, s.size))

    @property
    def ndim(self) -> int:
        return 4

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: Any) -> torch.Tensor:
        n = len(self.split)
        if isinstance(key, int):
            return self[torch.tensor([key])][0]
        if isinstance(key, slice):
            idx = torch.arange(n)[key]
        else:
            idx = torch.as_tensor(key)
            idx = idx.nonzero().flatten() if idx.dtype == torch.bool else idx.long().reshape(-1)
        cached = self.split._last_batch
        if cached is not None and torch.equal(cached[0], idx):
            return cached[1]
        out = torch.zeros(
            (len(idx), self.split.channels, self.split.size, self.split.size), dtype=torch.uint8
        )
        for row, i in enumerate(idx.tolist()):
            arr, _, err = self.split._decode[int(i)]
            if arr is None:
                self.split.note_errors([err])
                continue  # an image that became unreadable reads as black
            out[row] = torch.from_numpy(arr)
        return out


class StreamSplit(ImageTensorDataset):
    """One split of a streamed dataset: records and labels in memory, images on disk.

    Behaves as an :class:`ImageTensorDataset` for everything that reads it (``labels``,
    ``len``, ``images[idx]``, ``dataset[i]``, ``subset``); ``ordered_batches`` and
    :class:`StreamLoader` decode in ``workers`` processes.
    """

    def __init__(
        self,
        records: _Records,
        labels: torch.Tensor,
        size: int,
        channels: int,
        workers: int = 2,
    ) -> None:
        if len(records) != len(labels):
            raise ValueError(f"{len(records)} records but {len(labels)} labels")
        self.records = records
        self.labels = labels.long().contiguous()
        self.size, self.channels, self.workers = int(size), int(channels), int(workers)
        self.masks = None
        self.mean: tuple[float, ...] | None = None
        self.std: tuple[float, ...] | None = None
        self._decode = _Decode(records, self.size, self.channels)
        self._last_batch: tuple[torch.Tensor, torch.Tensor] | None = None
        self.skipped_at_read = 0
        self.skipped_examples: list[str] = []

    @property
    def images(self) -> _LazyImages:  # type: ignore[override]
        return _LazyImages(self)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[int(i)].float().div_(255.0), int(self.labels[i])

    def subset(self, idx: torch.Tensor) -> StreamSplit:
        idx_np = torch.as_tensor(idx, dtype=torch.long).numpy()
        return StreamSplit(
            self.records.take(idx_np), self.labels[idx], self.size, self.channels, self.workers
        )

    def note_errors(self, errors: list[str]) -> None:
        self.skipped_at_read += len(errors)
        self.skipped_examples = (self.skipped_examples + errors)[:5]

    def decode_batches(
        self, chunks: Sequence[Sequence[int]]
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``(uint8 images, labels, indices)`` of each chunk of indices, in order; images
        that cannot be read are left out of their batch and counted."""
        for images, idx, errors in _decoded_batches(self._decode, chunks, self.workers):
            if errors:
                self.note_errors(errors)
            if images is None:
                continue
            self._last_batch = (idx, images)
            yield images, self.labels[idx], idx

    def ordered_batches(
        self, batch_size: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The split in order, for evaluation."""
        n = len(self)
        chunks = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
        return self.decode_batches(chunks)


class StreamLoader(BatchLoader):
    """:class:`BatchLoader` for a :class:`StreamSplit`: the same seeded order and batches,
    decoded by the split's worker processes. ``batches(epoch, start=k)`` skips the first
    ``k`` batches without reading them, so a resumed run continues exactly."""

    def batches(
        self, epoch: int = 0, start: int = 0, with_index: bool = False
    ) -> Iterator[tuple[torch.Tensor, ...]]:
        idx = self.order(epoch)
        chunks = [
            idx[b * self.batch_size : (b + 1) * self.batch_size].tolist()
            for b in range(start, len(self))
        ]
        for images, labels, sel in self.dataset.decode_batches(chunks):
            yield (images, labels, sel) if with_index else (images, labels)


def make_loader(
    dataset: ImageTensorDataset,
    batch_size: int,
    shuffle: bool = True,
    drop_last: bool = True,
    seed: int = 0,
) -> BatchLoader:
    """The loader for a split: a :class:`StreamLoader` for streamed splits, else a
    :class:`BatchLoader` (slices of the in-memory tensor)."""
    cls = StreamLoader if isinstance(dataset, StreamSplit) else BatchLoader
    return cls(dataset, batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed)


# --------------------------------------------------------------------------- indexing pass
def _scan(
    records: _Records, size: int, channels: int, workers: int, stats_mask: np.ndarray | None
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Decode every record once: which are readable, the errors, and channel sums.

    ``stats_mask`` (bool per record) selects the images whose per-channel sum and sum of
    squares (float64, [0, 1] units) are accumulated; returns ``ok``, errors and
    ``[sum (C), sum_sq (C), pixel count]``.
    """
    dataset = _Decode(records, size, channels)
    n = len(records)
    chunk = 256
    chunks = [list(range(i, min(i + chunk, n))) for i in range(0, n, chunk)]
    ok = np.zeros(n, dtype=bool)
    errors: list[str] = []
    sums = np.zeros(2 * channels + 1, dtype=np.float64)
    for images, idx, errs in _decoded_batches(dataset, chunks, workers):
        errors += errs
        if images is None:
            continue
        ok[idx.numpy()] = True
        if stats_mask is not None:
            keep = torch.from_numpy(stats_mask[idx.numpy()])
            for part in images[keep].split(16):  # float64 copies of 16 images at a time
                x = part.double().div_(255.0)
                sums[:channels] += x.sum(dim=(0, 2, 3)).numpy()
                sums[channels : 2 * channels] += (x * x).sum(dim=(0, 2, 3)).numpy()
                sums[-1] += x.shape[0] * x.shape[2] * x.shape[3]
    return ok, errors, sums


def _stats(sums: np.ndarray, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std from ``_scan``'s sums, with the same rules as ``channel_stats``."""
    n = sums[-1]
    if n == 0:
        return tuple([0.5] * channels), tuple([0.25] * channels)
    mean = sums[:channels] / n
    var = np.maximum(sums[channels : 2 * channels] / n - mean * mean, 1e-12)
    return tuple(float(m) for m in mean), tuple(max(float(v), 1e-3) for v in np.sqrt(var))


def _check_options(name: str, o: dict[str, Any]) -> None:
    if o["img_size"] < 1:
        raise ValueError(f"{name}: img_size must be >= 1 for streamed data, got {o['img_size']}")
    if o["channels"] not in (1, 3):
        raise ValueError(f"{name}: channels must be 1 or 3, got {o['channels']}")
    if o["workers"] < 0:
        raise ValueError(
            f"{name}: workers must be >= 0 (0 decodes in this process), got {o['workers']}"
        )
    for key in ("val_frac", "test_frac"):
        if not 0.0 <= o[key] < 1.0:
            raise ValueError(f"{name}: {key} must be in [0, 1), got {o[key]}")


def _build(
    name: str,
    spec: str,
    parts: dict[str, tuple[_Records, torch.Tensor]],
    class_names: list[str],
    o: dict[str, Any],
    seed: int,
    info: dict[str, Any],
) -> DataBundle:
    """Scan, drop unreadable samples, split like the in-memory loader, measure mean/std."""
    size, channels, workers = o["img_size"], o["channels"], o["workers"]
    skipped: list[str] = []
    kept: dict[str, StreamSplit] = {}
    given = "val" in parts or "test" in parts
    mean = std = None
    for part, (records, labels) in parts.items():
        stats_mask = np.ones(len(records), dtype=bool) if given and part == "train" else None
        ok, errors, sums = _scan(records, size, channels, workers, stats_mask)
        if errors and o["strict"]:
            raise ValueError(f"{name}: cannot read image {errors[0]}")
        skipped += errors
        present = set(labels.tolist())
        readable = set(labels[torch.from_numpy(ok)].tolist())
        empty = [class_names[k] for k in sorted(present - readable)]
        if empty:
            raise ValueError(
                f"{name}: class(es) with no readable image: {', '.join(empty)} "
                f"({len(errors)} unreadable file(s) skipped)"
            )
        keep = np.nonzero(ok)[0]
        kept[part] = StreamSplit(
            records.take(keep), labels[torch.from_numpy(keep)], size, channels, workers
        )
        if stats_mask is not None:
            mean, std = _stats(sums, channels)
    split_info: dict[str, Any] = {}
    if not given:
        full = kept["train"]
        fracs = [o["val_frac"], o["test_frac"]]
        idx = split_indices(full.labels, fracs, seed)
        train, val, test = (full.subset(i) for i in idx)
        split_info["split"] = f"stratified from seed {seed}: " + ", ".join(
            f"{k}={v}" for k, v in zip(("val_frac", "test_frac"), fracs)
        )
    else:
        train, val, test = kept["train"], kept.get("val"), kept.get("test")
        split_info["split"] = "given by the data"
        if val is None:  # train and test given: validation drawn from train, as in memory
            train, val = (
                train.subset(i) for i in split_indices(train.labels, [o["val_frac"]], seed)
            )
    if test is not None and len(test) == 0:
        test = None
    if len(train) == 0 or val is None or len(val) == 0:
        raise ValueError(
            f"{name}: too few images for a train/val split ({len(train)} training images); "
            "add images or lower val_frac/test_frac"
        )
    if mean is None or "val" not in parts:
        _, _, sums = _scan(train.records, size, channels, workers, np.ones(len(train), dtype=bool))
        mean, std = _stats(sums, channels)
    info = dict(info)
    info.update(
        streamed=True,
        workers=workers,
        skipped_files=len(skipped),
        skipped_examples=skipped[:5],
        skipped_at_read=0,
    )
    return _StreamBundle(
        name=name,
        spec=spec,
        train=train,
        val=val,
        test=test,
        num_classes=len(class_names),
        class_names=class_names,
        in_chans=channels,
        img_size=size,
        mean=mean,
        std=std,
        info={"options": o, **split_info, **info},
        mirror_invariant=bool(o["flip"]),
    )


class _StreamBundle(DataBundle):
    """A :class:`DataBundle` whose ``describe()`` adds the files that failed while training."""

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        splits = [s for s in (self.train, self.val, self.test) if s is not None]
        d["skipped_at_read"] = sum(s.skipped_at_read for s in splits)
        return d


# --------------------------------------------------------------------------- folders
def split_stream_option(options: str) -> tuple[bool, str]:
    """Whether a folder spec's options ask for streaming, and the options without it."""
    stream, rest = False, []
    for part in options.split(","):
        key, eq, value = (s.strip() for s in part.partition("="))
        if eq and key == "stream":
            low = value.lower()
            if low not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(
                    f"dataset 'folder': option stream={value!r} must be a bool (1 or 0)"
                )
            stream = low in ("1", "true", "yes")
        else:
            rest.append(part)
    return stream, ",".join(rest)


def _list_class_dirs(root: Path, name: str) -> tuple[list[str], list[str], list[int]]:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ValueError(
            f"{name}: no class folders in {str(root)!r}; expected root/<class>/<image> "
            "(or root/train/<class>/<image> with root/val/...)"
        )
    paths: list[str] = []
    labels: list[int] = []
    for k, cls in enumerate(classes):
        files = sorted(
            f for f in (root / cls).rglob("*") if f.is_file() and not f.name.startswith(".")
        )
        paths += [str(f) for f in files]
        labels += [k] * len(files)
    if not paths:
        raise ValueError(f"{name}: the class folders in {str(root)!r} hold no files; add images")
    return classes, paths, labels


def _folder_parts(
    root: Path, name: str
) -> tuple[list[str], dict[str, tuple[list[str], list[int]]]]:
    """Class names and ``{split: (paths, labels)}`` of a folder (one part when unsplit)."""
    if (root / "train").is_dir() and ((root / "val").is_dir() or (root / "test").is_dir()):
        classes, paths, labels = _list_class_dirs(root / "train", name)
        parts = {"train": (paths, labels)}
        for part in ("val", "test"):
            if (root / part).is_dir():
                pc, pp, pl = _list_class_dirs(root / part, name)
                if pc != classes:
                    raise ValueError(
                        f"{name}: classes in {part}/ {pc} differ from train/ {classes}"
                    )
                parts[part] = (pp, pl)
        return classes, parts
    classes, paths, labels = _list_class_dirs(root, name)
    return classes, {"train": (paths, labels)}


def load_stream_folder(spec: str, options: str, seed: int) -> DataBundle:
    """``folder:PATH,stream=1``: the folder's images decoded as they are read (see module)."""
    o = parse_options("folder", options, dict(path="", stream=True, **_SPLIT_DEFAULTS), "path")
    if not o["path"]:
        raise ValueError("folder: give a path, e.g. 'folder:/data/pets,stream=1'")
    _check_options("folder", o)
    root = Path(os.path.expanduser(o["path"]))
    if not root.is_dir():
        raise FileNotFoundError(f"folder: {str(root)!r} is not an existing directory")
    classes, parts = _folder_parts(root, "folder")
    records = {
        k: (_Records(paths), torch.tensor(labels, dtype=torch.long))
        for k, (paths, labels) in parts.items()
    }
    return _build("folder", spec, records, classes, o, seed, {})


# --------------------------------------------------------------------------- shards
def _shard_paths(pattern: str) -> list[Path]:
    wds = _require_webdataset()
    pattern = os.path.expanduser(pattern)
    if Path(pattern).is_dir():
        paths = sorted(Path(pattern).glob("*.tar"))
        if not paths:
            raise ValueError(
                f"shards: no *.tar files in {pattern!r}; write them with "
                "`archbench data pack FOLDER --out DIR`"
            )
        return paths
    paths = [Path(p) for p in wds.shardlists.expand_urls(pattern)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"shards: {len(missing)} of {len(paths)} shard(s) do not exist, e.g. {missing[0]!r}; "
            "check the pattern (brace ranges such as {000000..000009} are expanded)"
        )
    return paths


def _split_key(name: str) -> tuple[str, str]:
    """webdataset's rule: the key is the path up to the first dot of the file name."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (ext.lower() if dot else "")


def _index_shard(path: Path) -> list[tuple[str, int, int, int]]:
    """``(key, offset, size, label)`` of each sample of a shard, from its tar headers."""
    try:
        tf = tarfile.open(path, mode="r:")
    except (tarfile.TarError, OSError) as err:
        raise ValueError(
            f"shards: {str(path)!r} is not a tar file ({err}); give shards written by "
            "`archbench data pack FOLDER --out DIR` or another webdataset writer"
        ) from None
    samples: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    with tf, open(path, "rb") as raw:
        for member in tf:
            if not member.isfile():
                continue
            key, ext = _split_key(member.name)
            if key not in samples:
                samples[key] = {}
                order.append(key)
            if ext == "cls":
                raw.seek(member.offset_data)
                text = raw.read(member.size).decode("utf-8", "replace").strip()
                try:
                    samples[key]["label"] = int(text)
                except ValueError:
                    raise ValueError(
                        f"shards: {str(path)!r}: {member.name} holds {text[:20]!r}, "
                        "expected an integer class index"
                    ) from None
            elif ext in IMAGE_EXTS or ext == "img":
                samples[key]["image"] = (member.offset_data, member.size)
    out = []
    for key in order:
        s = samples[key]
        if "image" in s and "label" in s:
            out.append((key, *s["image"], s["label"]))
    return out


def load_shards(spec: str, options: str, seed: int) -> DataBundle:
    """``shards:PATTERN``: webdataset tar shards with an image and a ``.cls`` per sample.

    Keys that start with ``train/``, ``val/`` or ``test/`` give the split (as the
    sub-folders of an image folder do); otherwise the split is drawn by
    ``val_frac``/``test_frac``. Class names come from ``classes.json`` beside the shards
    (a JSON list, written by ``archbench data pack``), else they are the class indices.
    """
    o = parse_options("shards", options, dict(path="", **_SPLIT_DEFAULTS), "path")
    if not o["path"]:
        raise ValueError("shards: give a pattern, e.g. 'shards:/data/pets/{000000..000009}.tar'")
    _check_options("shards", o)
    paths = _shard_paths(o["path"])
    rows: list[tuple[str, int, int, int, int]] = []
    for s, p in enumerate(paths):
        rows += [(key, s, off, size, label) for key, off, size, label in _index_shard(p)]
    if not rows:
        raise ValueError(
            f"shards: no samples with an image and a .cls label in {len(paths)} shard(s) "
            f"matching {o['path']!r}"
        )
    meta = paths[0].parent / "classes.json"
    n_classes = max(r[4] for r in rows) + 1
    class_names = [str(i) for i in range(n_classes)]
    if meta.is_file():
        names = json.loads(meta.read_text())
        if not isinstance(names, list) or len(names) < n_classes:
            raise ValueError(
                f"shards: {str(meta)!r} must be a JSON list of at least {n_classes} class names"
            )
        class_names = [str(n) for n in names]
    by_part: dict[str, list[tuple[int, int, int, int]]] = {}
    prefixed = all(r[0].split("/", 1)[0] in ("train", "val", "test") for r in rows)
    for key, s, off, size, label in rows:
        part = key.split("/", 1)[0] if prefixed else "train"
        by_part.setdefault(part, []).append((s, off, size, label))
    if "train" not in by_part:
        raise ValueError("shards: keys name val/ or test/ samples but no train/ samples")
    records = {}
    for part, items in by_part.items():
        arr = np.asarray(items, dtype=np.int64)
        records[part] = (_Records([str(p) for p in paths], arr[:, :3]), torch.from_numpy(arr[:, 3]))
    info = {"shards": len(paths)}
    return _build("shards", spec, records, class_names, o, seed, info)


# --------------------------------------------------------------------------- pack
def pack_folder(folder: str | Path, out: str | Path, shard_size: int = 10000) -> dict[str, Any]:
    """Write ``folder`` (``root/<class>/<image>`` or with ``train/val/test``) as tar shards.

    Each file's bytes are stored unchanged with its class index (``.cls``) under the key
    ``<split>/<class>/<name>``; ``out/classes.json`` lists the class names. Samples keep
    the folder's order, so ``shards:OUT`` splits and orders them as ``folder:FOLDER``
    does. Returns the shard count, sample count and the spec that reads them.
    """
    wds = _require_webdataset()
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    root = Path(os.path.expanduser(str(folder)))
    if not root.is_dir():
        raise FileNotFoundError(f"pack: {str(root)!r} is not an existing directory")
    out_dir = Path(os.path.expanduser(str(out)))
    if out_dir.exists() and any(out_dir.glob("*.tar")):
        raise ValueError(f"pack: {str(out_dir)!r} already holds .tar shards; choose an empty --out")
    classes, parts = _folder_parts(root, "pack")
    out_dir.mkdir(parents=True, exist_ok=True)
    split_given = len(parts) > 1
    n = 0
    pattern = str(out_dir / "%06d.tar")
    with wds.ShardWriter(pattern, maxcount=shard_size, verbose=0) as sink:
        for part, (paths, labels) in parts.items():
            for path, label in zip(paths, labels):
                p = Path(path)
                ext = p.suffix.lower().lstrip(".") or "bin"
                stem = p.relative_to(root / part if split_given else root).with_suffix("")
                key = str(stem).replace(".", "_")
                if split_given:
                    key = f"{part}/{key}"
                sample = {"__key__": key, "cls": str(label).encode()}
                sample[ext if ext in IMAGE_EXTS else "img"] = p.read_bytes()
                sink.write(sample)
                n += 1
    (out_dir / "classes.json").write_text(json.dumps(classes) + "\n")
    written = sorted(out_dir.glob("*.tar"))
    last = len(written) - 1
    spec = f"shards:{out_dir}/{{{0:06d}..{last:06d}}}.tar" if last > 0 else f"shards:{written[0]}"
    return {"shards": len(written), "samples": n, "classes": len(classes), "spec": spec}
