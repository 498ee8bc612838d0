"""compare on a local Ray cluster (``ray start --head`` with 2 CPUs on this machine): the
same results as the local executor, skip and resume, a dying worker, a dead address."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Ray puts a cluster on the machine's outward address; on loopback alone it stays here.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a throwaway cluster: no token files

import pytest  # noqa: E402
import ray  # noqa: E402

from archbench.bench.compare import CompareSpec, run_compare  # noqa: E402
from archbench.bench.executors import RayExecutor  # noqa: E402

pytestmark = pytest.mark.xdist_group("ray")

TINY = "shapes:n_train=64,n_val=32,n_test=32"
ACCURACIES = ("val_top1", "test_top1", "test_correct", "best_epoch", "status")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head():
    """A Ray head with 2 CPUs on loopback, started as a user would; stopped afterwards."""
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="rayt", dir="/tmp")  # short: Ray's socket paths are long
    ray_cli = Path(sys.executable).with_name("ray")
    head = subprocess.Popen(
        [str(ray_cli), "start", "--head", "--block", "--port", str(port), "--num-cpus", "2"]
        + ["--node-ip-address", "127.0.0.1", "--temp-dir", temp]
        + ["--include-dashboard=false", "--disable-usage-stats"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if head.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the Ray head did not start") from None
                time.sleep(0.2)
        yield address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops the processes it started
        try:
            head.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)  # its own process group, nothing else
            head.wait()
        shutil.rmtree(temp, ignore_errors=True)


def _spec(out, **kw):
    base = dict(
        models=["resnet_pico", "mixer_pico"],
        data=TINY,
        epochs=1,
        seeds=2,
        explain=False,
        measure_batch=8,
        out=str(out),
    )
    base.update(kw)
    return CompareSpec.from_dict(base)


def _records(out):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_ray_gives_the_local_results_and_skips_and_resumes(ray_head, tmp_path):
    t0 = time.perf_counter()
    res_local = run_compare(_spec(tmp_path / "local"), log=lambda *_: None)
    local_s = time.perf_counter() - t0
    logs = []
    t0 = time.perf_counter()
    res_ray = run_compare(
        _spec(tmp_path / "ray", executor="ray", ray_address=ray_head), log=logs.append
    )
    ray_s = time.perf_counter() - t0
    print(f"\nwall-clock: local {local_s:.1f} s {res_local['phases']}")
    print(f"wall-clock: ray {ray_s:.1f} s {res_ray['phases']}")
    assert "4 to run with 1 job(s) on the ray executor" in logs[0]
    assert not ray.is_initialized()  # the executor let go of the cluster it connected to

    local = {r["key"]: r for r in _records(tmp_path / "local")}
    on_ray = {r["key"]: r for r in _records(tmp_path / "ray")}
    assert len(local) == 4 and set(local) == set(on_ray)  # the same runs, keyed the same
    for key, r in local.items():
        assert r["status"] == "completed"
        assert {k: r[k] for k in ACCURACIES} == {k: on_ray[key][k] for k in ACCURACIES}
        assert [h["val_top1"] for h in r["history"]] == [
            h["val_top1"] for h in on_ray[key]["history"]
        ]
        # the Ray worker wrote into the comparison's own folder
        run_dir = Path(on_ray[key]["run_dir"])
        assert run_dir.is_relative_to(tmp_path / "ray")
        assert (run_dir / "checkpoints" / "best.safetensors").is_file()

    # skip-completed and resume: a run whose record was lost (its driver was killed) is
    # trained again on Ray, to the same numbers, and the three others are left alone
    lines = (tmp_path / "ray" / "results.jsonl").read_text().splitlines()
    lost = json.loads(lines[-1])
    (tmp_path / "ray" / "results.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    logs.clear()
    run_compare(_spec(tmp_path / "ray", executor="ray", ray_address=ray_head), log=logs.append)
    assert "3 already complete, 1 to run" in logs[0]
    assert sum(line.strip().startswith("done") for line in logs) == 1  # one run trained
    redone = _records(tmp_path / "ray")[-1]
    assert redone["key"] == lost["key"]
    assert {k: redone[k] for k in ACCURACIES} == {k: lost[k] for k in ACCURACIES}


def _die_on_seed_one(cfg, out, threads):
    if cfg["seed"] == 1:
        os._exit(1)  # the worker process dies mid-run
    return {"key": cfg["key"], "status": "completed", "pid": os.getpid()}


def test_a_dying_ray_worker_is_an_interrupted_run(ray_head):
    from ray import cloudpickle  # Ray's own copy pickles task arguments

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests
    executor = RayExecutor(ray_head)
    executor.start()
    try:
        cfgs = [{"key": f"k{s}", "model": "m", "seed": s} for s in (0, 1)]
        results = {c["key"]: r for c, r in executor.map(_die_on_seed_one, cfgs, "/tmp", 1)}
    finally:
        executor.close()
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert results["k0"]["status"] == "completed" and results["k0"]["pid"] != os.getpid()
    assert results["k1"]["status"] == "error" and results["k1"]["interrupted"] is True
    assert "worker died" in results["k1"]["error"]


def test_runs_larger_than_any_node_are_refused(ray_head, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # 3 threads per run; the node has 2 CPUs
    spec = _spec(tmp_path / "cmp", models=["resnet_pico"], seeds=1, executor="ray")
    spec.ray_address = ray_head
    with pytest.raises(ValueError, match="asks Ray for 3 CPUs.*largest node.*has 2"):
        run_compare(spec, log=lambda *_: None)
    assert not ray.is_initialized()


def test_an_address_that_does_not_answer_fails_before_work(tmp_path, capsys):
    from archbench.cli import main

    assert not ray.is_initialized()
    dead = f"127.0.0.1:{_free_port()}"  # nothing listens there
    spec = _spec(tmp_path / "cmp", executor="ray", ray_address=dead)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=f"no Ray cluster answers at {dead}.*ray start --head"):
        run_compare(spec, log=lambda *_: None)
    assert time.perf_counter() - t0 < 30
    assert not (tmp_path / "cmp").exists()
    out = tmp_path / "cli"
    args = ["compare", "resnet_pico", "--data", TINY, "--executor", "ray"]
    assert main([*args, "--ray-address", dead, "--out", str(out)]) == 2
    assert f"no Ray cluster answers at {dead}" in capsys.readouterr().err
    assert not out.exists()
