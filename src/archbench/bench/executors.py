"""Where a comparison's runs execute: in local processes or on a Ray cluster.

An executor takes a list of run configurations and one function ``fn(cfg, out, threads)``
that trains a run and returns its result (a dict; the function records its own failures),
and yields ``(cfg, result)`` as each run finishes, in whatever order they finish. It
neither plans nor reports: :func:`archbench.bench.compare.run_compare` does that, the
same way for every executor, so the same spec gives the same ``results.jsonl`` wherever
its runs trained.

- :class:`LocalExecutor`: in this process, one run after another, when one run runs at a
  time; otherwise a pool of ``jobs`` spawned worker processes.
- :class:`RayExecutor`: each run is one Ray task that declares what it needs
  (``num_cpus``: the run's threads; ``num_gpus``: 1 for a run on a CUDA device, else 0),
  so that Ray places it on a node with room for it. The task calls the same function and
  writes into the same output folder, so every node must see that folder at the same
  path (a shared filesystem). Ray is imported only here, and only when asked for.

A worker that dies mid-run (killed, out of memory, its node lost) does not stop the
comparison: its run comes back as an error marked ``interrupted``, which the next
invocation of the same spec runs again, resuming from the run's last checkpoint.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import socket
from collections.abc import Callable, Iterator
from typing import Any, Protocol

__all__ = ["EXECUTORS", "Executor", "LocalExecutor", "RayExecutor", "make_executor"]

EXECUTORS = ("local", "ray")

RunFn = Callable[[dict[str, Any], str, int], dict[str, Any]]
OnStart = Callable[[int, int, dict[str, Any]], None]


class Executor(Protocol):
    """Runs ``fn(cfg, out, threads)`` for every cfg and yields ``(cfg, result)`` as each ends."""

    name: str

    def start(self) -> None:
        """Check that the executor can run anything; called before any work starts."""

    def map(
        self,
        fn: RunFn,
        cfgs: list[dict[str, Any]],
        out: str,
        threads: int,
        on_start: OnStart | None = None,
    ) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]: ...

    def close(self) -> None:
        """Release what ``start`` took."""


def interrupted_result(cfg: dict[str, Any], err: BaseException | str) -> dict[str, Any]:
    """The result of a run whose worker died: an error that the next invocation redoes."""
    return {
        "key": cfg["key"],
        "model": cfg.get("model"),
        "seed": cfg.get("seed"),
        "status": "error",
        "error": f"worker died: {err}",
        "interrupted": True,
    }


class LocalExecutor:
    """Runs on this machine: in-process when one run goes at a time, else ``jobs``
    spawned processes (spawn: no state of the parent leaks into a run)."""

    name = "local"

    def __init__(self, jobs: int = 1) -> None:
        if jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {jobs}")
        self.jobs = jobs

    def start(self) -> None:
        return None

    def close(self) -> None:
        return None

    def map(
        self,
        fn: RunFn,
        cfgs: list[dict[str, Any]],
        out: str,
        threads: int,
        on_start: OnStart | None = None,
    ) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        workers = min(self.jobs, len(cfgs))
        if workers <= 1:
            for i, cfg in enumerate(cfgs, 1):
                if on_start is not None:
                    on_start(i, len(cfgs), cfg)
                yield cfg, fn(cfg, out, threads)
            return
        ctx = mp.get_context("spawn")
        with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = {pool.submit(fn, cfg, out, threads): cfg for cfg in cfgs}
            for fut in cf.as_completed(futures):
                cfg = futures[fut]
                try:
                    result = fut.result()
                except Exception as err:  # the worker process itself died
                    result = interrupted_result(cfg, err)
                yield cfg, result


def _ray_call(fn: RunFn, cfg: dict[str, Any], out: str, threads: int, cwd: str) -> dict[str, Any]:
    """A Ray task: the run's function, from the driver's working folder where the node has
    it (relative data or weight paths then mean what they meant on the driver)."""
    if os.path.isdir(cwd):
        os.chdir(cwd)
    return fn(cfg, out, threads)


def _gpus_for(cfg: dict[str, Any]) -> int:
    """GPUs a run asks Ray for: one when it trains on a CUDA device."""
    device = str(cfg.get("device") or "cpu")
    return 1 if device.startswith("cuda") else 0


def _ray_import() -> Any:
    try:
        import ray
    except ImportError:
        raise ValueError(
            "the ray executor needs Ray, which is not installed: pip install archbench[ray] "
            "(or run with --executor local)"
        ) from None
    return ray


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of ``HOST:PORT`` or ``ray://HOST:PORT``; None for ``auto`` and the like."""
    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = rest.rpartition(":")
    if not sep or not host:
        return None
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        return None


class RayExecutor:
    """Each run is a Ray task with declared ``num_cpus`` (its threads) and ``num_gpus``.

    ``address``: ``HOST:PORT`` of a running cluster's head (``ray start --head`` prints
    it), ``auto`` for the cluster this machine belongs to, or None for a Ray instance
    started here for the comparison alone. A given address is checked with a plain TCP
    connection first, so a cluster that does not answer fails in seconds, before work.
    """

    name = "ray"

    def __init__(self, address: str | None = None, connect_timeout: float = 5.0) -> None:
        if address is not None and (not isinstance(address, str) or not address.strip()):
            raise ValueError(f"ray_address must be HOST:PORT or 'auto', got {address!r}")
        self.address = address.strip() if address else None
        self.connect_timeout = connect_timeout
        self._owns_ray = False

    def _unreachable(self, why: str) -> ValueError:
        return ValueError(
            f"no Ray cluster answers at {self.address} ({why}); start one with "
            "`ray start --head --port PORT` on the head machine (and `ray start "
            "--address HEAD:PORT` on each worker), or fix --ray-address"
        )

    def start(self) -> None:
        ray = _ray_import()
        if ray.is_initialized():  # a driver that connected already (a notebook, a test)
            return
        if self.address is not None:
            hp = _host_port(self.address)
            if hp is None and self.address != "auto":
                raise ValueError(
                    f"ray_address must be HOST:PORT, ray://HOST:PORT or 'auto', got {self.address!r}"
                )
            if hp is not None:
                try:
                    socket.create_connection(hp, timeout=self.connect_timeout).close()
                except OSError as err:
                    raise self._unreachable(str(err)) from None
        try:
            ray.init(address=self.address, log_to_driver=False, logging_level="warning")
        except ConnectionError as err:
            cause = err.__cause__ or err
            why = (str(cause).strip().splitlines() or ["no answer"])[-1]
            if self.address is None or self.address == "auto":
                raise self._unreachable(why) from None
            raise ValueError(
                f"the Ray cluster at {self.address} answers but refused this driver ({why}); "
                "check that it runs the same Ray version and authentication settings "
                "(RAY_AUTH_MODE, the token file) as this machine"
            ) from None
        self._owns_ray = True

    def close(self) -> None:
        if self._owns_ray:
            import ray

            ray.shutdown()
            self._owns_ray = False

    def check_fits(self, threads: int, gpus: int) -> None:
        """Refuse runs that no node of the cluster could ever take (they would wait forever)."""
        import ray

        nodes = [n for n in ray.nodes() if n.get("Alive")]
        cpus = max((n.get("Resources", {}).get("CPU", 0) for n in nodes), default=0)
        gpu_nodes = max((n.get("Resources", {}).get("GPU", 0) for n in nodes), default=0)
        if threads > cpus:
            raise ValueError(
                f"each run asks Ray for {threads} CPUs (its threads), but the largest node of "
                f"the cluster has {cpus:g}; raise --jobs or lower OMP_NUM_THREADS so that "
                "threads per run fit one node"
            )
        if gpus > gpu_nodes:
            raise ValueError(
                f"runs ask Ray for {gpus} GPU, but no node of the cluster has one; add a GPU "
                "node (ray start --num-gpus 1) or train on the CPU"
            )

    def map(
        self,
        fn: RunFn,
        cfgs: list[dict[str, Any]],
        out: str,
        threads: int,
        on_start: OnStart | None = None,
    ) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        if not cfgs:
            return
        import ray

        self.check_fits(threads, max(_gpus_for(c) for c in cfgs))
        task = ray.remote(_ray_call)
        cwd = os.getcwd()
        pending = {}
        for i, cfg in enumerate(cfgs, 1):
            ref = task.options(
                num_cpus=threads, num_gpus=_gpus_for(cfg), max_retries=0, name=cfg["key"]
            ).remote(fn, cfg, out, threads, cwd)
            pending[ref] = cfg
            if on_start is not None:
                on_start(i, len(cfgs), cfg)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                cfg = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as err:  # the worker or its node died, or the task broke
                    result = interrupted_result(cfg, f"{type(err).__name__}: {err}")
                yield cfg, result


def make_executor(name: str, jobs: int = 1, ray_address: str | None = None) -> Executor:
    """The executor a spec names (``local`` or ``ray``)."""
    if name == "local":
        if ray_address is not None:
            raise ValueError("ray_address is given but executor is 'local'; use --executor ray")
        return LocalExecutor(jobs)
    if name == "ray":
        return RayExecutor(ray_address)
    raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, got {name!r}")
