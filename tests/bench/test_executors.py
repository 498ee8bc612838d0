"""Executors of compare: the local one, a dying worker, and the checks made before work."""

import json
import os
import sys

import pytest

from archbench.bench.compare import CompareSpec, run_compare
from archbench.bench.executors import LocalExecutor, RayExecutor, interrupted_result

TINY = "shapes:n_train=64,n_val=32,n_test=32"


def _double(cfg, out, threads):
    return {"key": cfg["key"], "value": 2 * cfg["x"], "threads": threads, "pid": os.getpid()}


def _die_on_three(cfg, out, threads):
    if cfg["x"] == 3:
        os._exit(1)  # the worker process dies without a word, as an OOM kill would
    return _double(cfg, out, threads)


def test_local_executor_in_process_and_in_a_pool():
    cfgs = [{"key": f"k{i}", "x": i} for i in range(4)]
    started = []
    serial = list(
        LocalExecutor(1).map(_double, cfgs, "out", 3, lambda i, n, c: started.append((i, n)))
    )
    assert [c["key"] for c, _ in serial] == ["k0", "k1", "k2", "k3"]  # in order, in-process
    assert [r["value"] for _, r in serial] == [0, 2, 4, 6]
    assert {r["pid"] for _, r in serial} == {os.getpid()} and serial[0][1]["threads"] == 3
    assert started == [(1, 4), (2, 4), (3, 4), (4, 4)]
    pooled = dict((c["key"], r) for c, r in LocalExecutor(2).map(_double, cfgs, "out", 1))
    assert {k: r["value"] for k, r in pooled.items()} == {"k0": 0, "k1": 2, "k2": 4, "k3": 6}
    assert os.getpid() not in {r["pid"] for r in pooled.values()}  # spawned workers


def test_a_dying_pool_worker_comes_back_as_an_interrupted_run():
    cfgs = [{"key": "k3", "x": 3, "model": "m", "seed": 0}]
    cfgs += [{"key": f"k{i}", "x": i} for i in (0, 1)]
    results = {c["key"]: r for c, r in LocalExecutor(2).map(_die_on_three, cfgs, "out", 1)}
    assert set(results) == {"k0", "k1", "k3"}
    assert results["k3"]["status"] == "error" and results["k3"]["interrupted"] is True
    assert "worker died" in results["k3"]["error"]


class _DiesOnce:
    """A local executor whose worker dies during the first run of mixer_pico."""

    name = "local"

    def __init__(self):
        self.inner = LocalExecutor(1)

    def start(self):
        pass

    def close(self):
        pass

    def map(self, fn, cfgs, out, threads, on_start=None):
        for cfg in cfgs:
            if cfg["model"] == "mixer_pico":
                yield cfg, interrupted_result(cfg, "SIGKILL")
            else:
                yield from self.inner.map(fn, [cfg], out, threads)


def test_an_interrupted_run_is_redone_by_the_next_invocation(tmp_path):
    spec = CompareSpec.from_dict(
        dict(
            models=["resnet_pico", "mixer_pico"],
            data=TINY,
            epochs=1,
            explain=False,
            out=str(tmp_path / "cmp"),
        )
    )
    run_compare(spec, log=lambda *_: None, executor=_DiesOnce())
    path = tmp_path / "cmp" / "results.jsonl"
    first = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["model"], r["status"], r.get("interrupted")) for r in first] == [
        ("resnet_pico", "completed", None),
        ("mixer_pico", "error", True),
    ]
    logs = []
    run_compare(spec, log=logs.append)  # the plain local executor this time
    assert "1 already complete, 1 to run" in logs[0]
    second = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["model"], r["status"]) for r in second] == [
        ("resnet_pico", "completed"),
        ("mixer_pico", "completed"),
    ]  # one record per run: the interrupted one was replaced, not kept beside it
    assert second[0] == first[0]


def test_without_ray_installed_the_ray_executor_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    spec = CompareSpec.from_dict(
        dict(models=["resnet_pico"], data=TINY, executor="ray", out=str(tmp_path / "cmp"))
    )
    with pytest.raises(ValueError, match=r"pip install archbench\[ray\]"):
        run_compare(spec, log=lambda *_: None)
    assert not (tmp_path / "cmp").exists()


def test_executor_keys_are_checked_and_do_not_change_the_identity(tmp_path):
    base = dict(models=["resnet_pico"], data=TINY, out=str(tmp_path / "cmp"))
    with pytest.raises(ValueError, match="executor must be one of local, ray"):
        CompareSpec.from_dict({**base, "executor": "dask"})
    with pytest.raises(ValueError, match="add --executor ray"):
        CompareSpec.from_dict({**base, "ray_address": "10.0.0.1:6379"})
    with pytest.raises(ValueError, match="HOST:PORT"):
        RayExecutor("   ")
    on_ray = CompareSpec.from_dict({**base, "executor": "ray", "ray_address": "head:6379"})
    assert on_ray.identity() == CompareSpec.from_dict(base).identity()
