"""Streamed image folders and tar shards (archbench.data.stream).

"Same order" means: for the same seed, a streamed split holds the same images and labels
at the same positions as the in-memory split, and for every (seed, epoch) its loader
yields the same batches, image for image, as the in-memory ``BatchLoader``.
"""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from archbench.cli import main
from archbench.data import BatchLoader, StreamSplit, load_dataset, make_loader, pack_folder
from archbench.data.base import channel_stats
from archbench.models import create_model
from archbench.train import Recipe, fit

CLASSES = ("circle", "square", "stripe")


def _write_images(root, n_per_class=(18, 16, 16), seed=0, fmt="PNG"):
    """Small images of different sizes and modes (RGB, L, RGBA) under root/<class>/."""
    rng = np.random.default_rng(seed)
    for k, (cls, n) in enumerate(zip(CLASSES, n_per_class)):
        d = root / cls
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            h, w = int(rng.integers(12, 24)), int(rng.integers(12, 24))
            arr = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
            arr[..., k] = 255  # the class shows in one channel
            im = Image.fromarray(arr)
            if i % 5 == 1:
                im = im.convert("L")
            elif i % 5 == 2:
                im = im.convert("RGBA")
            im.save(d / f"img{i:03d}.{'png' if fmt == 'PNG' else 'jpg'}", format=fmt)
    return root


def _corrupt(root):
    """Four unreadable files: zero bytes, random bytes, a truncated PNG, a text file."""
    (root / "circle" / "zzz_empty.png").write_bytes(b"")
    (root / "circle" / "zzz_readme.txt").write_text("not an image\n")
    (root / "square" / "zzz_noise.png").write_bytes(bytes(range(256)) * 3)
    good = (root / "stripe" / "img000.png").read_bytes()
    (root / "stripe" / "zzz_truncated.png").write_bytes(good[: len(good) // 2])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = _write_images(tmp_path_factory.mktemp("stream") / "imgs")
    _corrupt(root)
    return root


def _all_images(split):
    if isinstance(split, StreamSplit):
        return torch.cat([x for x, _, _ in split.ordered_batches(7)])
    return split.images


def _assert_same(mem, streamed):
    """Same classes, splits, images, labels and normalization."""
    assert streamed.class_names == mem.class_names
    assert (streamed.in_chans, streamed.img_size) == (mem.in_chans, mem.img_size)
    for name in ("train", "val", "test"):
        a, b = mem.split(name), streamed.split(name)
        assert isinstance(b, StreamSplit)
        assert torch.equal(a.labels, b.labels), name
        assert torch.equal(a.images, _all_images(b)), name
    np.testing.assert_allclose(streamed.mean, mem.mean, rtol=1e-9)
    np.testing.assert_allclose(streamed.std, mem.std, rtol=1e-9)
    # and the mean/std are the training split's, measured independently
    ref_mean, ref_std = channel_stats(mem.train.images)
    np.testing.assert_allclose(streamed.mean, ref_mean, rtol=1e-9)
    np.testing.assert_allclose(streamed.std, ref_std, rtol=1e-9)


def test_streamed_folder_equals_in_memory_folder_images_labels_and_order(folder):
    opts = "img_size=16,val_frac=0.2,test_frac=0.2"
    mem = load_dataset(f"folder:{folder},{opts}", seed=3)
    streamed = load_dataset(f"folder:{folder},{opts},stream=1,workers=2", seed=3)
    _assert_same(mem, streamed)
    # a different seed draws a different split, the same in both
    other = load_dataset(f"folder:{folder},{opts},stream=1,workers=0", seed=4)
    assert not torch.equal(other.val.labels, streamed.val.labels) or not torch.equal(
        _all_images(other.val), _all_images(streamed.val)
    )
    mem4 = load_dataset(f"folder:{folder},{opts}", seed=4)
    assert torch.equal(_all_images(other.val), mem4.val.images)
    # every epoch's batches: the same images in the same order, and a resumed epoch
    a = BatchLoader(mem.train, 8, seed=11)
    b = make_loader(streamed.train, 8, seed=11)
    assert len(a) == len(b) == len(mem.train) // 8
    for epoch in (0, 1):
        for (xa, ya, ia), (xb, yb, ib) in zip(
            a.batches(epoch, with_index=True), b.batches(epoch, with_index=True), strict=True
        ):
            assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ia, ib)
    tail_a = list(a.batches(1, start=2))
    tail_b = list(b.batches(1, start=2))
    assert len(tail_b) == len(a) - 2
    assert all(torch.equal(p[0], q[0]) for p, q in zip(tail_a, tail_b, strict=True))
    # random access reads the same image as the tensor holds
    assert torch.equal(streamed.val.images[3], mem.val.images[3])
    assert torch.equal(streamed.val.images[torch.tensor([4, 0])], mem.val.images[[4, 0]])
    mask = torch.arange(len(mem.val)) % 3 == 0
    assert torch.equal(streamed.val.images[mask], mem.val.images[mask])
    assert torch.equal(streamed.val.images[2:5], mem.val.images[2:5])


def test_corrupt_files_are_skipped_and_counted_like_in_memory(folder):
    mem = load_dataset(f"folder:{folder},img_size=16", seed=0).describe()
    streamed = load_dataset(f"folder:{folder},img_size=16,stream=1,workers=0", seed=0)
    d = streamed.describe()
    assert mem["skipped_files"] == d["skipped_files"] == 4
    assert sorted(e.split(":")[0].rsplit("/", 1)[1] for e in d["skipped_examples"]) == [
        "zzz_empty.png",
        "zzz_noise.png",
        "zzz_readme.txt",
        "zzz_truncated.png",
    ]
    assert d["n_train"] + d["n_val"] + d["n_test"] == 50
    assert d["skipped_at_read"] == 0
    with pytest.raises(ValueError, match="cannot read image"):
        load_dataset(f"folder:{folder},img_size=16,stream=1,strict=1,workers=0")


def test_file_that_breaks_after_loading_is_dropped_and_counted(tmp_path):
    root = _write_images(tmp_path / "imgs", n_per_class=(6, 6, 6))
    data = load_dataset(f"folder:{root},img_size=8,stream=1,workers=0,val_frac=0.2,test_frac=0")
    victim = data.train.records.paths[int(make_loader(data.train, 4, seed=0).order(0)[0])]
    with open(victim, "wb") as f:
        f.write(b"not an image any more")
    batches = list(make_loader(data.train, 4, seed=0).batches(0))
    assert [len(y) for _, y in batches][0] == 3  # the broken image left its batch
    assert sum(len(y) for _, y in batches) == 4 * len(batches) - 1
    assert data.describe()["skipped_at_read"] == 1


def test_split_folders_stream_like_in_memory(tmp_path):
    _write_images(tmp_path / "d" / "train", n_per_class=(8, 8, 8), seed=1)
    _write_images(tmp_path / "d" / "val", n_per_class=(3, 3, 3), seed=2)
    _write_images(tmp_path / "d" / "test", n_per_class=(2, 2, 2), seed=3)
    mem = load_dataset(f"folder:{tmp_path / 'd'},img_size=12", seed=0)
    streamed = load_dataset(f"folder:{tmp_path / 'd'},img_size=12,stream=1,workers=0", seed=0)
    _assert_same(mem, streamed)
    assert streamed.describe()["split"] == "given by the data"
    # shards keep the given split in their keys
    done = pack_folder(tmp_path / "d", tmp_path / "shards", shard_size=10)
    _assert_same(mem, load_dataset(f"{done['spec']},img_size=12,workers=0"))


def test_pack_round_trip_through_the_cli(folder, tmp_path, capsys):
    out = tmp_path / "shards"
    assert main(["data", "pack", str(folder), "--out", str(out), "--shard-size", "16"]) == 0
    printed = capsys.readouterr().out
    shards = sorted(out.glob("*.tar"))
    assert len(shards) == 4  # 54 files, 16 per shard
    assert json.loads((out / "classes.json").read_text()) == list(CLASSES)
    spec = printed.strip().splitlines()[-1].strip()
    assert spec == f"shards:{out}/{{000000..000003}}.tar"
    # what a shard holds: the file's bytes unchanged, and its class index
    with tarfile.open(shards[0]) as tf:
        names = tf.getnames()
        assert names[:2] == ["circle/img000.cls", "circle/img000.png"]
        assert tf.extractfile("circle/img000.cls").read() == b"0"
        assert (
            tf.extractfile("circle/img000.png").read()
            == (folder / "circle/img000.png").read_bytes()
        )
    opts = "img_size=16,val_frac=0.2,test_frac=0.2"
    mem = load_dataset(f"folder:{folder},{opts}", seed=5)
    streamed = load_dataset(f"{spec},{opts},workers=2", seed=5)
    _assert_same(mem, streamed)
    assert streamed.describe()["skipped_files"] == 4 and streamed.describe()["shards"] == 4
    # a folder of shards works too, and the same seed gives the same split
    again = load_dataset(f"shards:{out},{opts},workers=0", seed=5)
    assert torch.equal(again.test.labels, mem.test.labels)


def test_fit_trains_one_epoch_from_a_streamed_source(folder, tmp_path):
    data = load_dataset(f"folder:{folder},img_size=16,stream=1,workers=2", seed=0)
    torch.manual_seed(0)
    model = create_model("resnet_pico", num_classes=3, img_size=16)
    recipe = Recipe(epochs=1, batch_size=8, lr=3e-3, warmup_epochs=0.0)
    res = fit(model, data, recipe, tmp_path / "run", progress=False)
    assert res.status == "completed" and res.epochs_completed == 1
    assert res.steps == len(data.train) // 8
    assert res.final_val["n"] == len(data.val)
    assert np.isfinite(res.history[0]["train_loss"])
    # the same run from the in-memory folder ends with the same weights
    mem = load_dataset(f"folder:{folder},img_size=16", seed=0)
    torch.manual_seed(0)
    twin = create_model("resnet_pico", num_classes=3, img_size=16)
    res_mem = fit(twin, mem, recipe, tmp_path / "mem", progress=False)
    for key in ("train_loss", "val_loss", "val_top1"):
        assert res_mem.history[0][key] == pytest.approx(res.history[0][key], rel=1e-5), key
    for (name, p), q in zip(model.state_dict().items(), twin.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)


def test_bad_input_fails_before_training(tmp_path, capsys):
    not_tar = tmp_path / "000000.tar"
    not_tar.write_text("this is not a tar archive\n" * 40)
    with pytest.raises(ValueError, match="is not a tar file.*data pack"):
        load_dataset(f"shards:{not_tar}")
    with pytest.raises(FileNotFoundError, match="do not exist"):
        load_dataset(f"shards:{tmp_path}/{{000000..000002}}.tar")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class folders"):
        load_dataset(f"folder:{tmp_path / 'empty'},stream=1")
    (tmp_path / "empty" / "cat").mkdir()
    with pytest.raises(ValueError, match="hold no files"):
        load_dataset(f"folder:{tmp_path / 'empty'},stream=1")
    Image.new("RGB", (8, 8)).save(tmp_path / "empty" / "cat" / "ok.png")
    (tmp_path / "empty" / "dog").mkdir()
    (tmp_path / "empty" / "dog" / "broken.png").write_bytes(b"")
    with pytest.raises(ValueError, match="no readable image: dog"):
        load_dataset(f"folder:{tmp_path / 'empty'},stream=1,workers=0")
    with pytest.raises(ValueError, match="unknown option 'nosuchkey'"):
        load_dataset(f"folder:{tmp_path},stream=1,nosuchkey=3")
    with pytest.raises(ValueError, match="unknown option 'nosuchkey'"):
        load_dataset(f"shards:{tmp_path},nosuchkey=3")
    with pytest.raises(ValueError, match="stream='maybe' must be a bool"):
        load_dataset(f"folder:{tmp_path},stream=maybe")
    with pytest.raises(ValueError, match=r"val_frac must be in \[0, 1\)"):
        load_dataset(f"shards:{tmp_path},val_frac=1.5")
    with pytest.raises(ValueError, match="workers must be >= 0"):
        load_dataset(f"folder:{tmp_path / 'empty'},stream=1,workers=-1")
    # the CLI: one line, exit 2
    assert main(["data", f"shards:{not_tar}"]) == 2
    assert "is not a tar file" in capsys.readouterr().err
    assert main(["data", "pack", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert main(["data", "pack", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "give a folder and --out" in err and len(err.strip().splitlines()) == 2
