"""Multi-process training under torchrun (DistributedDataParallel, gloo on CPU).

Two processes at an effective batch of 32 (16 per rank) end with the weights of one
process at batch 32, within 1e-5 (max abs difference of any weight; measured 9e-8):
the ranks' gradients are averaged by an all-reduce, which adds the two halves' sums in
another order than one process adds the whole batch, so the runs agree to float32
rounding, not bit for bit. The recipe has no random augmentation (each rank draws its
own) and uses SGD at a stable learning rate: AdamW divides by the root of the second
moment, which turns rounding-level differences of near-zero gradients into large ones
(a single process that sums two half-batch gradients departs from the whole-batch run
as far), so it does not show whether the data were split right.

A run whose rank 1 is killed (SIGKILL) resumes with the same command from rank 0's last
checkpoint and ends bit for bit where the uninterrupted two-process run ends; the same
checkpoint resumed by one process ends within the tolerance of the one-process run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from archbench.cli import main
from archbench.data import load_dataset
from archbench.models import create_model
from archbench.train import Recipe, fit, read_checkpoint_meta
from archbench.train import distributed as D

pytestmark = pytest.mark.xdist_group("ddp")

DATA = "shapes:n_train=512,n_val=64,n_test=32,img_size=16"
EPOCHS, BATCH, STEPS_PER_EPOCH = 3, 32, 512 // 32
RECIPE = [
    "optimizer=sgd",
    "lr=0.05",
    "crop=none",
    "hflip=0",
    "label_smoothing=0",
    "adapt=false",
    "eval_batch_size=16",  # four validation batches: two per rank
]
TOLERANCE = 1e-5
TIMINGS = ("epoch_time_s", "step_time_s", "data_time_s", "images_per_s")


def _train_args(out: Path, batch: int = BATCH, every: int = 0) -> list[str]:
    """``every``: a checkpoint every that many steps (1 for the run that is killed)."""
    return [
        "train",
        "allconv_pico",  # no batch statistics
        "--data",
        DATA,
        "--epochs",
        str(EPOCHS),
        "--batch-size",
        str(batch),
        "--set",
        *RECIPE,
        f"checkpoint_every_steps={every}",
        "--out",
        str(out),
    ]


def _torchrun(out: Path, batch: int = BATCH, every: int = 0) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "archbench",
        *_train_args(out, batch, every),
    ]


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _weights(out: Path) -> dict[str, torch.Tensor]:
    ck = load_file(out / "checkpoints" / "last.safetensors")
    return {k: v for k, v in ck.items() if k.startswith("model/")}


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def one(tmp_path_factory) -> Path:
    """The one-process run, in this process (the CLI's own code path)."""
    out = tmp_path_factory.mktemp("one") / "run"
    assert main(_train_args(out)) == 0
    return out


@pytest.fixture(scope="module")
def two(tmp_path_factory) -> tuple[Path, str]:
    """The same command under torchrun with two processes."""
    out = tmp_path_factory.mktemp("two") / "run"
    proc = subprocess.run(_torchrun(out), env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout


def test_two_processes_end_with_the_weights_of_one(one, two):
    out2, _ = two
    w1, w2 = _weights(one), _weights(out2)
    diff = _max_diff(w1, w2)
    assert diff <= TOLERANCE, diff
    # the weights moved far more than the tolerance: the comparison means something
    torch.manual_seed(0)
    init = create_model("allconv_pico", num_classes=10, img_size=16).state_dict()
    moved = max(float((w1[f"model/{k}"] - v).abs().max()) for k, v in init.items())
    assert moved > 1000 * TOLERANCE
    h1 = [json.loads(line) for line in (one / "metrics.jsonl").read_text().splitlines()]
    h2 = [json.loads(line) for line in (out2 / "metrics.jsonl").read_text().splitlines()]
    for r1, r2 in zip(h1, h2, strict=True):
        assert r2["train_loss"] == pytest.approx(r1["train_loss"], abs=1e-5)
        assert r2["val_loss"] == pytest.approx(r1["val_loss"], abs=1e-5)
        assert r2["val_top1"] == pytest.approx(r1["val_top1"], abs=1e-9)  # the whole split


def test_only_rank_zero_writes_and_the_batch_is_stated(two):
    out, stdout = two
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    leftovers = [p.name for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
    assert stdout.count("status completed") == 1  # rank 1 prints nothing
    assert stdout.count("epoch   1") == 1
    res = json.loads((out / "fit_result.json").read_text())
    assert res["status"] == "completed" and res["steps"] == EPOCHS * STEPS_PER_EPOCH
    rt = res["runtime"]
    assert (rt["world_size"], rt["effective_batch"], rt["per_rank_batch"]) == (2, 32, 16)
    assert rt["backend"] == "gloo"
    record = json.loads(lines[0])
    assert (record["world_size"], record["per_rank_batch"]) == (2, 16)
    ck = load_file(out / "checkpoints" / "last.safetensors")
    assert {"extra/rng/torch/rank1", "extra/rng/aug/rank1"} <= ck.keys()
    # images counted over both ranks
    assert res["images_per_s"] > 0 and json.loads(lines[-1])["images_per_s"] > 0


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def _rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds workers through /proc")
def test_killed_rank_then_resume_ends_as_the_uninterrupted_run(tmp_path, one, two):
    out = tmp_path / "run"
    last = out / "checkpoints" / "last.safetensors"
    total = EPOCHS * STEPS_PER_EPOCH
    proc = subprocess.Popen(
        _torchrun(out, every=1), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    killed_at = None
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None and killed_at is None:
            step = 0
            if last.is_file():
                try:
                    step = read_checkpoint_meta(last)["state"]["step"]
                except (ValueError, KeyError, OSError):
                    step = 0
            # past the first epoch, inside the second: a mid-epoch resume point
            if step >= STEPS_PER_EPOCH + 3:
                workers = [c for c in _children(proc.pid) if _rank_of(c) == 1]
                if workers:
                    os.kill(workers[0], signal.SIGKILL)
                    killed_at = step
            time.sleep(0.01)
        proc.wait(60)  # torchrun tears the other rank down and fails
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    err = proc.stderr.read().decode()[-3000:]
    assert killed_at is not None, err
    assert proc.returncode != 0, err
    state = read_checkpoint_meta(last)["state"]
    assert 0 < state["step"] < total, state["step"]
    assert state["world_size"] == 2
    assert state["position_in_epoch"] == state["step_in_epoch"] * BATCH
    # the checkpoint of two processes also resumes in one process
    single = tmp_path / "single"
    shutil.copytree(out, single)
    assert main(_train_args(single, every=1)) == 0
    assert _max_diff(_weights(one), _weights(single)) <= TOLERANCE

    again = subprocess.run(
        _torchrun(out, every=1), env=_env(), capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr[-3000:]
    res = json.loads((out / "fit_result.json").read_text())
    assert res["status"] == "completed" and res["steps"] == total
    out2, _ = two
    ref, got = _weights(out2), _weights(out)
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    assert _max_diff(_weights(one), got) <= TOLERANCE
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    h_ref = json.loads((out2 / "fit_result.json").read_text())["history"]
    for r, g in zip(h_ref, res["history"], strict=True):
        for key, value in r.items():
            if key not in TIMINGS:
                assert g[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


_THREADS_SCRIPT = """
import os, sys
from archbench.cli import main
before = len(os.listdir("/proc/self/task"))
rc = main(sys.argv[1:])
after = len(os.listdir("/proc/self/task"))
with open(f"{sys.argv[-1]}.rank{os.environ['RANK']}", "w") as f:
    f.write(f"{before} {after} {rc}")
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads through /proc")
def test_training_under_torchrun_ends_the_group_and_its_threads(tmp_path):
    """The process group's gloo worker threads are gone when ``fit`` returns: left to the
    interpreter's exit, one that frees a finished collective aborts the process
    (SIGABRT after a completed run, about one run in three on a loaded machine)."""
    script = tmp_path / "threads.py"
    script.write_text(_THREADS_SCRIPT)
    args = [
        a if a != DATA else "shapes:n_train=64,n_val=32,n_test=32,img_size=16"
        for a in _train_args(tmp_path / "run")
    ]
    args[args.index("--epochs") + 1] = "1"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(script),
        *args,
    ]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # threads before training, after it, and the exit code, per rank: as many as before
    got = [(tmp_path / f"run.rank{r}").read_text().split() for r in "01"]
    assert all(before == after and rc == "0" for before, after, rc in got), got


# ----- bad input and the pieces, in this process -----------------------------------------
def test_world_size_that_does_not_divide_the_batch_fails_before_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    out = tmp_path / "run"
    assert main(_train_args(out, batch=32)) == 2
    err = capsys.readouterr().err
    assert "batch_size 32" in err and "3 processes" in err
    assert "--batch-size 30 or 33" in err  # the nearest multiples of 3
    assert not out.exists()  # nothing written, nothing trained
    data = load_dataset("shapes:n_train=64,n_val=16,n_test=16,img_size=16", seed=0)
    model = create_model("allconv_pico", num_classes=10, img_size=16)
    recipe = Recipe(epochs=1, batch_size=32, adapt=False)
    with pytest.raises(ValueError, match="multiple of 3"):
        fit(model, data, recipe, tmp_path / "fit", progress=False)
    assert not (tmp_path / "fit").exists()


def test_per_rank_batch():
    assert D.per_rank_batch(32, 2) == 16
    assert D.per_rank_batch(32, 1) == 32
    with pytest.raises(ValueError, match=r"multiple of 5 \(e.g. --batch-size 30 or 35\)"):
        D.per_rank_batch(32, 5)


def test_env_ranks(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert D.env_ranks() == (0, 1, 0)
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ValueError, match="RANK is not"):
        D.env_ranks()
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert D.env_ranks() == (3, 4, 1)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="outside"):
        D.env_ranks()


def test_rank_loader_splits_each_global_batch():
    from archbench.data.loader import BatchLoader, epoch_generator

    data = load_dataset("shapes:n_train=40,n_val=8,n_test=8,img_size=8", seed=0)
    loader = BatchLoader(data.train, 8, shuffle=True, drop_last=True, seed=3)
    parts = [D.RankLoader(loader, r, 2) for r in range(2)]
    assert len(parts[0]) == len(loader) == 5
    order = torch.randperm(40, generator=epoch_generator(3, 1, stream=1))  # written out
    for step, (a, b) in enumerate(zip(*(p.batches(1, with_index=True) for p in parts))):
        assert torch.equal(a[2], order[step * 8 : step * 8 + 4])
        assert torch.equal(b[2], order[step * 8 + 4 : step * 8 + 8])
        assert torch.equal(a[0], data.train.images[order[step * 8 : step * 8 + 4]])
        assert torch.equal(b[1], data.train.labels[order[step * 8 + 4 : step * 8 + 8]])
    resumed = list(parts[1].batches(1, start=3, with_index=True))
    assert len(resumed) == 2 and torch.equal(resumed[0][2], order[28:32])


def test_rank_loader_on_a_streamed_folder_reads_the_rank_part(tmp_path):
    """A streamed split decodes only the rank's images, the same as the in-memory ones."""
    import numpy as np
    from PIL import Image

    from archbench.data import StreamSplit, make_loader

    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(20):
            arr = rng.integers(0, 255, size=(10, 10, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / cls / f"{i:02d}.png")
    mem = load_dataset(f"folder:{tmp_path},img_size=8", seed=0)
    streamed = load_dataset(f"folder:{tmp_path},img_size=8,stream=1,workers=0", seed=0)
    assert isinstance(streamed.train, StreamSplit)
    loaders = [
        make_loader(d.train, 8, shuffle=True, drop_last=True, seed=1) for d in (mem, streamed)
    ]
    for r in range(2):
        a, b = (D.RankLoader(loader, r, 2) for loader in loaders)
        for (xa, ya, ia), (xb, yb, ib) in zip(
            a.batches(0, with_index=True), b.batches(0, with_index=True), strict=True
        ):
            assert len(ib) == 4 and torch.equal(ia, ib)
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    shard = D.val_shard(streamed.val, 2, D.DistContext(rank=1, world_size=2))
    assert isinstance(shard, StreamSplit) and shard.mean == streamed.val.mean
    assert torch.equal(shard.labels, streamed.val.labels[2:4])


def test_val_shard_gives_alternate_batches():
    data = load_dataset("shapes:n_train=16,n_val=50,n_test=8,img_size=8", seed=0)
    val = data.val
    ctx = [D.DistContext(rank=r, world_size=2) for r in range(2)]
    a, b = (D.val_shard(val, 16, c) for c in ctx)
    assert torch.equal(a.images, torch.cat([val.images[0:16], val.images[32:48]]))
    assert torch.equal(b.images, torch.cat([val.images[16:32], val.images[48:50]]))
    assert a.mean == val.mean and b.std == val.std
    assert D.val_shard(val, 64, ctx[1]) is None  # one batch only: rank 1 has none


def test_rank_seed():
    assert D.rank_seed(12345, 0) == 12345
    seeds = {D.rank_seed(12345, r) for r in range(1, 8)}
    assert len(seeds) == 7 and 12345 not in seeds
    assert all(0 <= s < 2**63 for s in seeds)


def test_sync_batchnorm_conversion_and_cpu_refusal(tmp_path, monkeypatch, capsys):
    model = create_model("resnet_pico", num_classes=10, img_size=16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    converted, count = D.convert_sync_batchnorm(model)
    bns = [m for m in converted.modules() if isinstance(m, torch.nn.SyncBatchNorm)]
    assert count == len(bns) > 0
    assert not any(
        type(m) in (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d) for m in converted.modules()
    )
    after = converted.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    with pytest.raises(ValueError, match="only on CUDA"):
        D.check_sync_batchnorm(torch.device("cpu"), model)
    D.check_sync_batchnorm(torch.device("cuda"))  # no refusal where torch supports it
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    out = tmp_path / "run"
    assert main([*_train_args(out), "--sync-bn"]) == 2
    assert "SyncBatchNorm" in capsys.readouterr().err and not out.exists()
