"""Multi-process training under torchrun: process group, rank helpers, rank shards.

``torchrun --nproc_per_node=N -m archbench train ...`` starts N processes with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` in their environment; :func:`archbench.train.fit`
reads them (:func:`env_ranks`), joins the process group (:func:`setup`: gloo on CPU,
nccl on CUDA with one GPU per local rank) and trains with DistributedDataParallel.
Without torchrun, or with a world of one process, none of this runs: ``fit`` takes
its single-process path unchanged.

How the work is split (see docs/training.md, "Multi-process training (torchrun)"):

- ``recipe.batch_size`` is the effective (global) batch; each rank trains on
  ``batch_size / world_size`` samples per step (:func:`per_rank_batch` refuses a world
  size that does not divide it).
- Every rank draws the same global permutation of an epoch as one process does, and
  rank ``r`` takes the ``r``-th contiguous part of each global batch
  (:class:`RankLoader`), so the union of the ranks' micro-batches of a step is the
  one-process batch of that step. DDP averages the gradients of the equal-sized
  micro-batches, which is the gradient of the mean loss over the whole batch.
- Validation splits the validation batches among the ranks (batch ``b`` goes to rank
  ``b mod world_size``) and sums the metrics over ranks (:func:`all_reduce_sums`), so
  every rank sees the figures of the whole split.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

__all__ = [
    "DistContext",
    "RankLoader",
    "StepModule",
    "all_reduce_sums",
    "any_rank",
    "barrier",
    "check_sync_batchnorm",
    "cleanup",
    "convert_sync_batchnorm",
    "env_ranks",
    "gather_states",
    "is_main",
    "per_rank_batch",
    "rank",
    "rank_seed",
    "setup",
    "val_shard",
    "world_size",
]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: rank, world size, local rank and backend.

    ``enabled`` is false for a single process (no process group, nothing to reduce)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    owns_group: bool = False  # this context initialized the process group (and ends it)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(
            f"environment variable {name}={raw!r} is not an integer; it is set by torchrun "
            "(run the command through torchrun, or unset it for a single process)"
        ) from None


def env_ranks() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment; ``(0, 1, 0)``
    without it."""
    world = _env_int("WORLD_SIZE", 1)
    rank_ = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank_)
    if world < 1:
        raise ValueError(f"WORLD_SIZE must be >= 1, got {world}")
    if not 0 <= rank_ < world:
        raise ValueError(f"RANK={rank_} is outside the world of WORLD_SIZE={world} processes")
    if world > 1 and "RANK" not in os.environ:
        raise ValueError(
            f"WORLD_SIZE={world} is set but RANK is not; start the processes with torchrun "
            "(torchrun --nproc_per_node=N -m archbench train ...)"
        )
    return rank_, world, local


def world_size() -> int:
    """Processes in the run: the process group's size, else torchrun's ``WORLD_SIZE``, else 1."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return env_ranks()[1]


def rank() -> int:
    """This process's rank (0 without torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return env_ranks()[0]


def is_main() -> bool:
    """Whether this process is rank 0, the one that writes files and shows progress."""
    return rank() == 0


def per_rank_batch(batch_size: int, world: int) -> int:
    """The micro-batch of each rank for an effective batch of ``batch_size``; a world size
    that does not divide it is a ValueError that names the batch sizes that would work."""
    if world < 1:
        raise ValueError(f"world size must be >= 1, got {world}")
    if batch_size % world:
        lower = (batch_size // world) * world
        upper = lower + world
        sizes = " or ".join(str(b) for b in (lower, upper) if b > 0)
        divisors = [w for w in range(1, min(batch_size, 2 * world) + 1) if batch_size % w == 0]
        raise ValueError(
            f"the effective batch_size {batch_size} cannot be split evenly over "
            f"{world} processes (torchrun world size); use a batch size that is a multiple "
            f"of {world} (e.g. --batch-size {sizes}), or a number of processes that divides "
            f"{batch_size} ({', '.join(map(str, divisors))})"
        )
    return batch_size // world


def setup(device: torch.device) -> DistContext:
    """Join torchrun's process group for training on ``device`` (gloo for CPU, nccl for
    CUDA); a context with ``enabled`` false without torchrun or with one process."""
    rank_, world, local = env_ranks()
    if world == 1:
        return DistContext()
    if not dist.is_available():
        raise ValueError("this torch build has no torch.distributed; run a single process")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type not in ("cpu", "cuda"):
        raise ValueError(
            f"multi-process training runs on cpu (gloo) or cuda (nccl), not {device.type}; "
            "use --device cpu or cuda"
        )
    owns = False
    if not dist.is_initialized():
        if backend == "nccl":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, init_method="env://")
        owns = True
    else:
        backend = dist.get_backend()
        if dist.get_world_size() != world or dist.get_rank() != rank_:
            raise ValueError(
                "the initialized process group does not match torchrun's RANK/WORLD_SIZE"
            )
    return DistContext(rank_, world, local, backend, owns)


def cleanup(ctx: DistContext) -> None:
    """End the process group if ``ctx`` started it, and with it its worker threads.

    ``destroy_process_group`` only drops torch's own references: the group lives on while
    anything else holds it (a DistributedDataParallel reducer does; :func:`fit` drops its
    wrapper before this call), and so do its gloo worker threads. Left to the interpreter's
    exit, a worker that frees a finished collective's tensors needs the GIL of an
    interpreter that is shutting down, and the process aborts ("terminate called without
    an active exception") after a run that completed. The collection frees a holder left
    in a reference cycle now, so the group's destructor joins its threads while the
    interpreter is alive."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()
        gc.collect()


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (nothing for a single process)."""
    if ctx.enabled:
        dist.barrier()


def _reduce_device(ctx: DistContext) -> torch.device:
    if ctx.backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sums(values: Mapping[str, float], ctx: DistContext) -> dict[str, float]:
    """Each value summed over the ranks (float64); every rank must pass the same keys."""
    keys = sorted(values)
    if not ctx.enabled or not keys:
        return {k: float(values[k]) for k in keys}
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    t = t.to(_reduce_device(ctx))
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return dict(zip(keys, t.cpu().tolist()))


def any_rank(flags: list[bool], ctx: DistContext) -> list[bool]:
    """Element-wise OR of ``flags`` over the ranks, so every rank takes the same branch."""
    if not ctx.enabled:
        return [bool(f) for f in flags]
    t = torch.tensor([1 if f else 0 for f in flags], dtype=torch.int32).to(_reduce_device(ctx))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.cpu().tolist()]


def gather_states(state: torch.Tensor, ctx: DistContext) -> list[torch.Tensor]:
    """Every rank's ``state`` (a uint8 RNG state of the same size on every rank), by rank."""
    if not ctx.enabled:
        return [state]
    dev = _reduce_device(ctx)
    local = state.to(dev)
    out = [torch.empty_like(local) for _ in range(ctx.world_size)]
    dist.all_gather(out, local)
    return [t.cpu() for t in out]


def rank_seed(seed: int, rank_: int) -> int:
    """The seed of rank ``rank_`` derived from the run's ``seed``: rank 0 keeps it (so its
    draws are those of a single process); other ranks get well-separated seeds."""
    if rank_ == 0:
        return int(seed)
    mixed = (int(seed) + 0x9E3779B97F4A7C15 * (rank_ + 1)) % (2**64)
    mixed = ((mixed ^ (mixed >> 31)) * 0xBF58476D1CE4E5B9) % (2**64)
    return (mixed ^ (mixed >> 29)) % (2**63)


class RankLoader:
    """Rank ``rank``'s part of every global batch of ``loader`` (a ``BatchLoader`` or a
    ``StreamLoader``): the ``rank``-th of ``world`` contiguous slices of the batch.

    Same length and the same ``batches(epoch, start, with_index)`` interface as the
    loader; only this rank's images are read (a streamed split decodes only them)."""

    def __init__(self, loader: Any, rank_: int, world: int) -> None:
        self.loader = loader
        self.rank, self.world = rank_, world
        self.batch_size = per_rank_batch(loader.batch_size, world)
        if not loader.drop_last and len(loader.dataset) % loader.batch_size:
            raise ValueError("RankLoader needs whole global batches (drop_last=True)")

    def __len__(self) -> int:
        return len(self.loader)

    def indices(self, epoch: int, start: int = 0) -> list[torch.Tensor]:
        """This rank's sample indices of each global batch from ``start`` on."""
        order = self.loader.order(epoch)
        gb, b = self.loader.batch_size, self.batch_size
        lo = self.rank * b
        return [order[g * gb + lo : g * gb + lo + b] for g in range(start, len(self.loader))]

    def batches(
        self, epoch: int = 0, start: int = 0, with_index: bool = False
    ) -> Iterator[tuple[torch.Tensor, ...]]:
        chunks = self.indices(epoch, start)
        dataset = self.loader.dataset
        if hasattr(dataset, "decode_batches"):  # streamed: decode this rank's images only
            stream = dataset.decode_batches([c.tolist() for c in chunks])
            for images, labels, sel in stream:
                yield (images, labels, sel) if with_index else (images, labels)
            return
        images, labels = dataset.images, dataset.labels
        for sel in chunks:
            batch = (images.index_select(0, sel), labels.index_select(0, sel))
            yield (*batch, sel) if with_index else batch


def val_shard(split: Any, eval_batch_size: int, ctx: DistContext) -> Any:
    """The validation batches of this rank: batch ``b`` of ``split`` (in order, of
    ``eval_batch_size``) goes to rank ``b mod world_size``, so every batch is the one a
    single process evaluates. None when this rank gets no batch."""
    n = len(split)
    starts = range(ctx.rank * eval_batch_size, n, ctx.world_size * eval_batch_size)
    parts = [torch.arange(s, min(s + eval_batch_size, n)) for s in starts]
    if not parts:
        return None
    sub = split.subset(torch.cat(parts))
    sub.mean, sub.std = split.mean, split.std
    return sub


class StepModule(nn.Module):
    """The model and the task's trainable modules under one module, whose forward runs
    the task's step: DistributedDataParallel wraps this, so any task (one that calls
    ``model.forward_features``, reads ``model.aux_loss`` or trains a projector) has the
    gradients of all its parameters averaged over the ranks, and the model itself stays
    unwrapped (checkpoints keep its own parameter names)."""

    def __init__(self, model: nn.Module, trainable: nn.Module, task: Any) -> None:
        super().__init__()
        self.model = model
        self.trainable = trainable
        self._task = task  # not a module: the task object itself

    def forward(self, batch: Any, state: Any) -> Any:
        return self._task.step(batch, state)


def check_sync_batchnorm(device: torch.device, model: nn.Module | None = None) -> None:
    """Refuse SyncBatchNorm where torch cannot run it: its forward synchronizes only CUDA
    (and other accelerator) tensors and raises on CPU tensors, so a CPU run fails here,
    before training starts."""
    if device.type == "cuda":
        return
    count = 0 if model is None else _count_batchnorm(model)
    raise ValueError(
        f"sync_bn: torch's SyncBatchNorm synchronizes batch statistics only on CUDA devices, "
        f"and this run trains on {device.type} (the model has {count} BatchNorm layer(s)); "
        "drop --sync-bn (each rank then normalizes with its own micro-batch's statistics) "
        "or train with --device cuda"
    )


def _count_batchnorm(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def convert_sync_batchnorm(model: nn.Module) -> tuple[nn.Module, int]:
    """``model`` with every BatchNorm layer as a SyncBatchNorm (the same parameter and
    buffer tensors, so the same state-dict names) and how many were converted."""
    count = _count_batchnorm(model)
    return nn.SyncBatchNorm.convert_sync_batchnorm(model), count
