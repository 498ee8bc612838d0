from __future__ import annotations

import os
import pickle
import re

import numpy as np
import pytest
import torch
from PIL import Image

from archbench.data import load_dataset, make_shapes, shapes_class_table, split_indices
from archbench.data.shapes import SHAPES, TEXTURES

SMALL = "shapes:n_train=40,n_val=20,n_test=20,img_size=16"


def test_shapes_is_deterministic_and_has_masks():
    a, b = make_shapes(30, seed=5), make_shapes(30, seed=5)
    c = make_shapes(30, seed=6)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    assert a.images.shape == (30, 3, 32, 32) and a.images.dtype == torch.uint8
    assert a.masks.shape == (30, 32, 32) and a.masks.dtype == torch.bool
    covered = a.masks.float().mean(dim=(1, 2))
    assert (covered > 0.02).all() and (covered < 0.7).all()
    assert a.get_mask(3).shape == (32, 32)
    assert torch.bincount(a.labels, minlength=10).tolist() == [3] * 10


def test_shapes_classes_need_shape_and_texture():
    table = shapes_class_table(10)
    assert len(set(table)) == 10
    for s in SHAPES:  # every shape with >= 2 textures, every texture with >= 2 shapes
        assert len({t for sh, t in table if sh == s}) >= 2
    for t in TEXTURES:
        assert len({sh for sh, tt in table if tt == t}) >= 2
    with pytest.raises(ValueError, match="num_classes"):
        shapes_class_table(21)


def test_shapes_bundle_splits_are_distinct_and_described():
    d = load_dataset(SMALL, seed=1)
    assert (len(d.train), len(d.val), len(d.test)) == (40, 20, 20)
    assert d.in_chans == 3 and d.img_size == 16 and d.num_classes == 10
    assert not torch.equal(d.train.images[:20], d.val.images)
    info = d.describe()
    assert info["n_train"] == 40 and len(info["mean"]) == 3 and len(info["std"]) == 3
    x = d.train.images.float() / 255
    assert info["mean"][0] == pytest.approx(x[:, 0].mean().item(), abs=1e-4)
    assert d.val.mean == d.mean  # splits carry the bundle's normalization


def test_spec_errors_name_the_accepted_values():
    with pytest.raises(
        ValueError, match="accepted: cifar10, cifar100, digits, folder, npz, shapes"
    ):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="unknown option 'colour'.*num_classes"):
        load_dataset("shapes:colour=1")
    with pytest.raises(ValueError, match="must be a int"):
        load_dataset("shapes:n_train=many")


def test_digits_and_stratified_split():
    d = load_dataset("digits", seed=0)
    assert len(d.train) + len(d.val) + len(d.test) == 1797
    assert d.in_chans == 1 and d.img_size == 32 and d.num_classes == 10
    assert min(d.val.class_counts(10)) >= 15  # every class in validation
    d8 = load_dataset("digits:img_size=8,channels=3", seed=0)
    assert d8.train.images.shape[1:] == (3, 8, 8)
    labels = torch.arange(100) % 4
    parts = split_indices(labels, [0.2, 0.1], seed=0)
    allidx = torch.cat(parts).sort()[0]
    assert torch.equal(allidx, torch.arange(100))
    assert [len(p) for p in parts] == [68, 20, 12]  # per class of 25: 5 val, 3 test (2.5 rounds up)
    assert torch.equal(split_indices(labels, [0.2], 1)[1], split_indices(labels, [0.2], 1)[1])


def _png(path, mode, size=(20, 12), value=128):
    Image.new(mode, size, value if mode == "L" else (value,) * len(mode)).save(path)


def test_folder_skips_and_counts_bad_files(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(5):
            _png(tmp_path / cls / f"{i}.png", "RGB", value=40 * i)
    _png(tmp_path / "cat" / "gray.png", "L")
    _png(tmp_path / "dog" / "alpha.png", "RGBA")
    Image.new("RGB", (9, 9), (1, 2, 3)).save(tmp_path / "dog" / "x.jpg", quality=90)
    (tmp_path / "cat" / "empty.png").write_bytes(b"")
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    good = (tmp_path / "dog" / "0.png").read_bytes()
    (tmp_path / "dog" / "trunc.png").write_bytes(good[: len(good) // 2])
    d = load_dataset(f"folder:{tmp_path},img_size=8,val_frac=0.2,test_frac=0.2", seed=0)
    info = d.describe()
    assert info["skipped_files"] == 3
    assert d.class_names == ["cat", "dog"] and d.in_chans == 3
    assert len(d.train) + len(d.val) + len(d.test) == 13
    assert d.train.images.shape[1:] == (3, 8, 8)
    with pytest.raises(ValueError, match="cannot read image"):
        load_dataset(f"folder:{tmp_path},strict=1")
    (tmp_path / "bird").mkdir()
    with pytest.raises(ValueError, match="no readable image.*bird"):
        load_dataset(f"folder:{tmp_path}")


def test_folder_missing_path_and_given_split(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset(f"folder:{tmp_path / 'nope'}")
    for split, n in (("train", 4), ("val", 2)):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                _png(tmp_path / split / cls / f"{i}.png", "L")
    d = load_dataset(f"folder:{tmp_path},channels=1,img_size=8")
    assert (len(d.train), len(d.val), d.test) == (8, 4, None) and d.in_chans == 1


def test_npz_layouts_and_errors(tmp_path):
    x = np.random.default_rng(0).random((30, 10, 10, 3)).astype(np.float32)
    y = np.arange(30) % 3
    np.savez(tmp_path / "a.npz", x=x, y=y)
    d = load_dataset(f"npz:{tmp_path / 'a.npz'}")
    assert d.in_chans == 3 and d.img_size == 10 and d.num_classes == 3
    assert int(d.train.images.max()) > 200  # floats in [0, 1] scaled to 0..255
    np.savez(tmp_path / "b.npz", images=(x[..., 0] * 255).astype(np.uint8), labels=y)
    assert load_dataset(f"npz:{tmp_path / 'b.npz'},img_size=16").train.images.shape[1:] == (
        1,
        16,
        16,
    )
    np.savez(tmp_path / "c.npz", data=x)
    with pytest.raises(ValueError, match="expected 'x' and 'y'"):
        load_dataset(f"npz:{tmp_path / 'c.npz'}")


def test_cifar_batches_and_refuses_foreign_pickles(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {
            b"data": rng.integers(0, 255, (20, 3072), dtype=np.uint8),
            b"labels": [i % 10 for i in range(20)],
        }
        with open(root / name, "wb") as f:
            pickle.dump(d, f)
    d = load_dataset(f"cifar10:{tmp_path}")
    assert len(d.train) + len(d.val) == 100 and len(d.test) == 20 and d.num_classes == 10

    class Evil:  # os.system, not print: an imported Ray replaces builtins.print
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(root / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    foreign = f"{os.system.__module__}.{os.system.__qualname__}"  # posix.system on Linux
    with pytest.raises(ValueError, match=f"refusing to load {re.escape(foreign)}"):
        load_dataset(f"cifar10:{tmp_path}")
    with pytest.raises(FileNotFoundError, match="missing"):
        load_dataset(f"cifar100:{tmp_path}")
