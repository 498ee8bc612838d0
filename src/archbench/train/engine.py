"""The training loop: ``fit(model, data, recipe, out_dir)``.

A plain PyTorch loop over in-memory batches with batched augmentation. What one step
computes belongs to the run's task (:mod:`archbench.train.tasks`; classification by
default); callbacks observe and adjust around it through hooks, called in this order
(the task's own hooks first, then each callback's)::

    task.setup(model, data, recipe)
    on_fit_start(state)                      # before the optimizer is built
    [optimizer built from task.param_groups; a resumed run restores its checkpoint here]
    for each epoch:
        on_epoch_start(state)
        for each batch:
            on_train_batch_start(state, batch)
            outputs = task.step(batch, state)
            on_before_backward(state, loss)
            loss.backward()
            on_after_backward(state)
            [gradient clipping]
            on_before_optimizer_step(state)
            optimizer.step()
            on_step_end(state)
        [validation with task.eval_step]
        on_epoch_end(state, record)
    on_fit_end(state, result)

What it writes in ``out_dir``::

    recipe.yaml                the frozen recipe of the run (task and task arguments included)
    metrics.jsonl              one JSON record per finished epoch
    checkpoints/last.safetensors   weights + optimizer + RNG + task + callback state (resume point)
    checkpoints/best.safetensors   weights of the epoch with the best monitored validation metric
    fit_result.json            the FitResult of the latest call

A model that schedules itself by training progress (NASNet-A's scheduled drop path)
defines ``set_training_progress(fraction)``; the loop calls it before every step with
the fraction of optimizer steps done (0 at the first step) and after every step, so it
reads 1 once the run's last step is done, and a resumed run continues the schedule.

Devices and precision: ``fit(..., device=)`` moves the model (and the task's modules) to
``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto`` (CUDA, then MPS, then CPU); by default the
model stays where it is. ``recipe.precision`` autocasts the steps to bf16 or fp16; fp16
also scales the loss with ``torch.amp.GradScaler`` (gradients are unscaled before
callbacks and clipping see them, and a step with overflowing gradients is skipped, not
failed) and is CUDA-only. ``recipe.channels_last`` keeps the model and every input batch
in NHWC order; ``recipe.compile`` compiles the model in place (``nn.Module.compile``:
same parameters and checkpoint names). On CUDA, batches are copied from pinned memory
with ``non_blocking=True``. What was used is in ``FitResult.runtime``.

Multi-process training: under ``torchrun`` (``RANK``/``WORLD_SIZE`` in the environment,
more than one process) ``fit`` joins the process group (gloo on CPU, nccl on CUDA with
``cuda:LOCAL_RANK``), and DistributedDataParallel runs each step, averaging the gradients
of the model and the task's trainable modules; the model itself stays unwrapped, so
checkpoints move between any numbers of processes. ``recipe.batch_size`` is the effective
batch: rank ``r`` trains on the ``r``-th contiguous part of every global batch of the
one-process order. Validation batches are shared out and their sums combined; epoch
sums and stop decisions (time budget, a callback's stop, a non-finite loss) are agreed
over the ranks. Only rank 0 writes files and shows progress; a checkpoint holds every
rank's RNG states. Rank ``r > 0`` draws its own augmentation and dropout (seeds from
:func:`archbench.train.distributed.rank_seed`); rank 0 draws those of one process. See
:mod:`archbench.train.distributed` and docs/training.md.

Reproducibility: every epoch reseeds the global RNG (dropout, drop-path) and an
augmentation generator from (seed, epoch), and the shuffling order is a function of
(seed, epoch). A mid-epoch checkpoint also stores both generators' states, so a resumed
run replays exactly the remaining batches; in deterministic mode it ends with the same
weights as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..data.base import DataBundle, ImageTensorDataset
from ..data.loader import epoch_generator
from ..data.stream import make_loader
from ..data.transforms import BatchAugment, one_hot_smooth
from ..layers.onednn_linear import onednn_linears
from . import distributed as dist_
from .callbacks import EMA, TrainState
from .checkpoint import atomic_write_text, load_checkpoint, read_checkpoint_meta, save_checkpoint
from .evaluate import autocast, check_model_data, evaluate, model_device, normalized_batches
from .optim import build_optimizer, set_lr
from .recipe import Recipe, load_recipe
from .tasks import Batch, Task, create_task, soft_cross_entropy

__all__ = [
    "FitResult",
    "check_model_data",
    "evaluate",
    "fit",
    "resolve_device",
    "soft_cross_entropy",
    "validate",
]

LAST = "last.safetensors"
BEST = "best.safetensors"


@dataclass
class FitResult:
    """What a call to :func:`fit` ended with. ``status``: ``completed``, ``stopped_time``
    (wall-clock budget spent), ``stopped`` (a callback asked to stop) or ``failed_nan``."""

    status: str
    epochs_completed: int
    history: list[dict[str, Any]]
    best_val_top1: float | None
    best_epoch: int | None
    best_checkpoint: str | None
    last_checkpoint: str | None
    final_val: dict[str, float] | None
    train_time_s: float
    images_per_s: float
    data_time_share: float
    steps: int
    out_dir: str
    error: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)  # filled by callbacks' on_fit_end
    monitor: str = "val_top1"  # the validation metric that chose the best checkpoint
    best_metric: float | None = None  # its value at best_epoch
    # device, precision, channels_last, compile: what the run trained with
    runtime: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


DEVICES = ("cpu", "cuda", "cuda:N", "mps", "auto")


def resolve_device(device: str | torch.device) -> torch.device:
    """The torch device for ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto`` (CUDA when
    present, then MPS, then CPU). Asking for a device this machine lacks is a ValueError."""
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise TypeError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    name = device.strip().lower()
    mps = getattr(torch.backends, "mps", None)
    has_mps = mps is not None and mps.is_available()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if has_mps else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not has_mps:
            raise ValueError(
                "device mps was asked for but torch.backends.mps.is_available() is false on "
                "this machine; use --device cpu (or auto, which picks what is present)"
            )
        return torch.device("mps")
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {name} was asked for but torch.cuda.is_available() is false (no GPU, "
                "or a CPU-only torch build); use --device cpu (or auto, which picks what is "
                "present), or install a CUDA build of torch on a machine with a GPU"
            )
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {name} was asked for but this machine has "
                f"{torch.cuda.device_count()} CUDA device(s) (cuda:0 .. "
                f"cuda:{torch.cuda.device_count() - 1}); use one of them"
            )
        return dev
    raise ValueError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")


def to_device(t: torch.Tensor, dev: torch.device) -> torch.Tensor:
    """``t`` on ``dev``; to CUDA through pinned memory with a non-blocking copy (without
    CUDA, pinning does not apply and this is a plain ``.to``)."""
    if dev.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(dev, non_blocking=True)
    return t.to(dev)


def _channels_last(x: torch.Tensor, on: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if on and x.dim() == 4 else x


def _make_scaler(precision: str, dev: torch.device) -> torch.amp.GradScaler:
    """The loss scaler: active for fp16 only (disabled, it passes everything through)."""
    return torch.amp.GradScaler(dev.type, enabled=precision == "fp16")


def _epoch_seed(seed: int, epoch: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch) * 104_729 + 17) % (2**63)


def _names(callbacks: Sequence[Any]) -> list[str]:
    """Checkpoint key of each callback: its ``name`` (numbered when names repeat)."""
    seen: dict[str, int] = {}
    out = []
    for cb in callbacks:
        base = str(getattr(cb, "name", type(cb).__name__))
        seen[base] = seen.get(base, 0) + 1
        out.append(base if seen[base] == 1 else f"{base}#{seen[base]}")
    return out


def _call(callbacks: Sequence[Any], hook: str, *args: Any) -> None:
    for cb in callbacks:
        fn = getattr(cb, hook, None)
        if fn is not None:
            fn(*args)


def _write_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in history))


def validate(
    task: Task, model: nn.Module, split: ImageTensorDataset, recipe: Recipe, state: TrainState
) -> dict[str, float]:
    """The task's validation metrics of ``model`` on ``split`` (means over samples).

    Batches hold the normalized images in order, unaugmented; a multi-view task gets the
    same image in each view. ``n`` is the sample count.
    """
    dev = model_device(model)
    vstate = dataclasses.replace(state, model=model)
    was_training = model.training
    model.eval()
    task.train(False)
    sums: dict[str, float] = {}
    n = 0
    try:
        with torch.no_grad():
            for x, y, idx in normalized_batches(split, recipe.eval_batch_size):
                x, y = x.to(dev), y.to(dev)
                x = _channels_last(x, recipe.channels_last)
                labelled = task.uses_labels
                batch = Batch(
                    views=[x] * task.views,
                    targets=one_hot_smooth(y, state.data.num_classes, 0.0) if labelled else None,
                    labels=y if labelled else None,
                    index=idx.to(dev),
                    raw=split.images[idx].to(dev),
                )
                with autocast(recipe.precision, dev):
                    metrics = task.eval_step(batch, vstate)
                b = len(y)
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + float(v) * b
                n += b
    finally:
        model.train(was_training)
        task.train(was_training)
    if n == 0:
        raise ValueError("validation: the split holds no samples")
    return {**{k: v / n for k, v in sums.items()}, "n": n}


def fit(
    model: nn.Module,
    data: DataBundle,
    recipe: Recipe | str,
    out_dir: str | Path,
    *,
    task: Task | None = None,
    callbacks: Sequence[Any] = (),
    resume: bool = True,
    max_seconds: float | None = None,
    progress: bool | None = None,
    device: str | torch.device | None = None,
    sync_bn: bool = False,
) -> FitResult:
    """Train ``model`` on ``data.train`` with ``recipe``; choose checkpoints on ``data.val``.

    ``task``: what a step computes; by default the recipe's (``recipe.task`` with
    ``recipe.task_args``). A task object given here must carry the recipe's task name, so
    that the frozen recipe says what trained the run. ``resume``: continue from
    ``out_dir/checkpoints/last.safetensors`` when it exists (the recipe must be the same).
    ``max_seconds``: wall-clock budget for the whole run (time of earlier, resumed calls
    included); the run stops cleanly after the step that passes it, with a checkpoint,
    and status ``stopped_time``. ``progress``: show a progress bar (default: only when
    stderr is a terminal). ``recipe.ema`` adds an :class:`EMA` callback unless one is given.
    ``device``: ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto``; the model is moved there
    (default: it trains where its parameters are). See "Devices and precision" above.
    ``sync_bn``: under torchrun, BatchNorm layers become SyncBatchNorm (CUDA only). See
    "Multi-process training" above.
    """
    recipe = load_recipe(recipe)
    if not isinstance(data, DataBundle):
        raise TypeError(
            f"fit expects a DataBundle from archbench.data.load_dataset, got {type(data).__name__}"
        )
    if max_seconds is not None and max_seconds <= 0:
        raise ValueError(f"max_seconds must be > 0, got {max_seconds}")
    # batch size, flips, warm-up and length fitted to this data (archbench.train.recipe)
    recipe = recipe.for_data(data)
    if task is None:
        task = create_task(recipe.task, recipe.task_args)
    elif not isinstance(task, Task):
        raise TypeError(f"task must be an archbench.train.Task, got {type(task).__name__}")
    elif task.name != recipe.task:
        raise ValueError(
            f"the task given is {task.name!r} but the recipe names {recipe.task!r}; "
            f"use recipe.replace(task={task.name!r}) so that the run records its task"
        )
    task.check(model, data)
    dev = model_device(model) if device is None else resolve_device(device)
    rank, world, local_rank = dist_.env_ranks()
    if world > 1:  # under torchrun: checked before anything moves or is written
        dist_.per_rank_batch(recipe.batch_size, world)
        if dev.type not in ("cpu", "cuda"):
            raise ValueError(
                f"multi-process training runs on cpu (gloo) or cuda (nccl), not {dev.type}; "
                "use --device cpu or cuda"
            )
        if dev.type == "cuda":
            if dev.index is not None and device is not None and dev.index != local_rank:
                raise ValueError(
                    f"under torchrun each process trains on cuda:LOCAL_RANK; rank {rank} has "
                    f"LOCAL_RANK {local_rank} but {dev} was asked for; use --device cuda"
                )
            dev = device = torch.device("cuda", local_rank)
        if sync_bn and dev.type != "cuda":
            dist_.check_sync_batchnorm(dev, model)
    if recipe.precision == "fp16" and dev.type != "cuda":
        raise ValueError(
            f"precision fp16 needs a CUDA device (autocast with a gradient scaler), and this "
            f"run trains on {dev.type}; use precision bf16 or fp32 on {dev.type}, or "
            "--device cuda on a machine with a GPU"
        )
    if device is not None:
        model.to(dev)
    if recipe.channels_last:
        model.to(memory_format=torch.channels_last)
    if recipe.compile:
        model.compile()  # in place: parameters and state_dict names stay the model's own
    out = Path(out_dir)
    ck_dir = out / "checkpoints"
    if rank == 0:  # under torchrun only rank 0 writes files
        ck_dir.mkdir(parents=True, exist_ok=True)
    callbacks = list(callbacks)
    if recipe.ema and not any(isinstance(c, EMA) for c in callbacks):
        callbacks.append(EMA(recipe.ema_decay))

    prev_det = torch.are_deterministic_algorithms_enabled()
    if recipe.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    dctx = dist_.setup(dev)  # a single process (enabled false) without torchrun
    run = None
    try:
        run = _Run(model, data, recipe, out, task, callbacks, max_seconds, progress, dctx)
        run.sync_bn = bool(sync_bn)
        with onednn_linears(model, recipe.onednn_linear):
            return run.run(resume)
    finally:
        torch.use_deterministic_algorithms(prev_det)
        if run is not None:
            run.ddp = None  # DDP's reducer holds the process group (see cleanup)
        dist_.cleanup(dctx)


class _Run:
    """One call of :func:`fit`: the live objects and the loop, split into short methods."""

    def __init__(
        self, model, data, recipe, out, task, callbacks, max_seconds, progress, dctx=None
    ) -> None:
        self.model, self.data, self.recipe, self.out, self.task = model, data, recipe, out, task
        self.callbacks = callbacks
        self.hooks = [task, *callbacks]  # the task's hooks run first
        self.max_seconds = max_seconds
        self.show = sys.stderr.isatty() if progress is None else bool(progress)
        # torchrun: rank 0 writes files and shows progress; DDP wraps the step (start())
        self.dist = dctx if dctx is not None else dist_.DistContext()
        self.main = self.dist.is_main
        self.show = self.show and self.main
        self.sync_bn = False
        self.ddp: nn.Module | None = None
        self.runtime_sync_bn = 0
        self.val_split = data.val
        self.last_path = out / "checkpoints" / LAST
        self.best_path = out / "checkpoints" / BEST
        self.metrics_path = out / "metrics.jsonl"
        self.dev = model_device(model)
        self.scaler = _make_scaler(recipe.precision, self.dev)
        # slices of the in-memory tensor, or worker-decoded batches of a streamed split
        self.loader = make_loader(
            data.train, recipe.batch_size, shuffle=True, drop_last=True, seed=recipe.seed
        )
        if self.dist.enabled:  # this rank's contiguous part of every global batch
            self.loader = dist_.RankLoader(self.loader, self.dist.rank, self.dist.world_size)
            self.val_split = dist_.val_shard(data.val, recipe.eval_batch_size, self.dist)
        self.aug = BatchAugment(
            mean=data.mean,
            std=data.std,
            num_classes=data.num_classes,
            img_size=data.img_size,
            crop=recipe.crop,
            crop_scale=recipe.crop_scale,
            crop_ratio=recipe.crop_ratio,
            crop_pad=recipe.crop_pad,
            hflip=recipe.hflip,
            cutout=recipe.cutout,
            mixup_alpha=recipe.mixup_alpha,
            cutmix_alpha=recipe.cutmix_alpha,
            mix_prob=recipe.mix_prob,
            switch_prob=recipe.switch_prob,
            label_smoothing=recipe.label_smoothing,
        )
        self.aug_gen: torch.Generator | None = None
        self.error: str | None = None
        self.s: dict[str, Any] = dict(
            epoch=0,
            step=0,
            step_in_epoch=0,
            history=[],
            best_value=None,
            best_epoch=None,
            train_time_s=0.0,
            images=0,
            step_time_s=0.0,
            data_time_s=0.0,
            partial=None,
            final_val=None,
            status="running",
        )

    def report_progress(self) -> None:
        """``model.set_training_progress(steps done / total steps)``, for models that have it."""
        fn = getattr(self.model, "set_training_progress", None)
        if callable(fn):
            total = self.recipe.schedule_steps(len(self.loader))[0]
            fn(min(1.0, self.s["step"] / total))

    def call(self, hook: str, *args: Any) -> None:
        for receiver in self.hooks:
            fn = getattr(receiver, hook, None)
            if fn is not None:
                fn(*args)

    # ----- set-up and checkpoints --------------------------------------------------
    def start(self, resume: bool) -> None:
        model, task, recipe = self.model, self.task, self.recipe
        self.state = TrainState(
            model=model,
            optimizer=None,
            recipe=recipe,
            data=self.data,
            out_dir=self.out,
            steps_per_epoch=len(self.loader),
            task=task,
        )
        self.state.validate = self.validate_model
        # the task's new modules start from the recipe's seed, whatever the caller's RNG
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(recipe.seed)
            task.setup(model, self.data, recipe)
        if self.dist.enabled and self.sync_bn:
            model, self.runtime_sync_bn = dist_.convert_sync_batchnorm(model)
            self.model = self.state.model = model
            task.trainable = dist_.convert_sync_batchnorm(task.trainable)[0]
        task.to(self.dev)
        self.call("on_fit_start", self.state)  # may still swap modules: no optimizer yet
        self.optimizer = build_optimizer(task.param_groups(model, recipe), recipe)
        self.state.optimizer = self.optimizer
        dist_.barrier(self.dist)  # every rank sees the same last checkpoint
        if resume and self.last_path.is_file():
            self.restore()
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            # rank 0's weights and buffers are broadcast to every rank here
            self.ddp = DistributedDataParallel(
                dist_.StepModule(self.model, task.trainable, task), device_ids=None
            )
        if self.main:
            recipe.to_file(self.out / "recipe.yaml")
            _write_metrics(self.metrics_path, self.s["history"])

    def validate_model(self, model: nn.Module) -> dict[str, float]:
        """The task's validation metrics of ``model`` on the whole validation split; under
        torchrun each rank evaluates its share of the batches and the sums are combined."""
        if not self.dist.enabled:
            return validate(self.task, model, self.data.val, self.recipe, self.state)
        local: dict[str, float] = {}
        if self.val_split is not None:
            val = validate(self.task, model, self.val_split, self.recipe, self.state)
            n = val.pop("n")
            local = {k: v * n for k, v in val.items()}
            local["n"] = n
        import torch.distributed as dist

        parts: list[Any] = [None] * self.dist.world_size
        dist.all_gather_object(parts, local)
        sums: dict[str, float] = {}
        for part in parts:  # in rank order, so every rank adds up the same way
            for k, v in part.items():
                sums[k] = sums.get(k, 0.0) + v
        n = sums.pop("n", 0)
        if n == 0:
            raise ValueError("validation: the split holds no samples")
        return {**{k: v / n for k, v in sums.items()}, "n": int(n)}

    def restore(self) -> None:
        meta = read_checkpoint_meta(self.last_path)
        if meta.get("recipe") != self.recipe.to_dict():
            raise ValueError(
                f"{self.last_path} was written by a different recipe; use another output "
                "folder, start over (archbench train --fresh, or fit(..., resume=False)), or "
                f"the recipe in {self.out / 'recipe.yaml'}"
            )
        ck = load_checkpoint(self.last_path, self.model, self.optimizer)
        self.s.update(ck["meta"]["state"])
        for key in ("world_size", "position_in_epoch"):  # written by a torchrun run
            self.s.pop(key, None)
        extra = ck["extra"]
        self.task.load_state_dict(
            {k[len("task/") :]: v for k, v in extra.items() if k.startswith("task/")}
        )
        for cb, cb_name in zip(self.callbacks, _names(self.callbacks)):
            prefix = f"cb/{cb_name}/"
            sd = {k[len(prefix) :]: v for k, v in extra.items() if k.startswith(prefix)}
            if sd and hasattr(cb, "load_state_dict"):
                cb.load_state_dict(sd)
        if self.scaler.is_enabled() and self.s.get("scaler"):
            self.scaler.load_state_dict(self.s["scaler"])
        if self.s["status"] in ("stopped_time", "stopped"):
            self.s["status"] = "running"
        if self.dist.enabled and not self.main:
            # the epoch's partial sums in the checkpoint are over all ranks: rank 0 carries them
            part = self.s.get("partial")
            if part:
                self.s["partial"] = dict(
                    loss=0.0,
                    n=0,
                    data_time=0.0,
                    step_time=0.0,
                    terms=dict.fromkeys(part["terms"], 0.0),
                )
        if self.s["step_in_epoch"] > 0:
            r = self.dist.rank
            if r == 0:
                torch.set_rng_state(extra["rng/torch"])
                self.aug_gen = torch.Generator()
                self.aug_gen.set_state(extra["rng/aug"])
            elif f"rng/torch/rank{r}" in extra:
                torch.set_rng_state(extra[f"rng/torch/rank{r}"])
                self.aug_gen = torch.Generator()
                self.aug_gen.set_state(extra[f"rng/aug/rank{r}"])
            else:  # written by fewer processes: this rank's draws restart from a seed
                seed = _epoch_seed(self.recipe.seed, self.s["epoch"]) + self.s["step_in_epoch"]
                torch.manual_seed(dist_.rank_seed(seed, r))
                self.aug_gen = torch.Generator().manual_seed(dist_.rank_seed(seed + 1, r))

    def save_last(self) -> None:
        if self.dist.enabled:
            self.save_last_distributed()
            return
        if self.scaler.is_enabled():
            self.s["scaler"] = self.scaler.state_dict()
        extra = {"rng/torch": torch.get_rng_state()}
        if self.aug_gen is not None:
            extra["rng/aug"] = self.aug_gen.get_state()
        self.write_last(extra, self.s)

    def save_last_distributed(self) -> None:
        """Under torchrun: every rank hands rank 0 its RNG states and its share of the
        epoch's sums, and rank 0 writes the checkpoint (the others wait for it)."""
        ctx, s = self.dist, self.s
        torch_states = dist_.gather_states(torch.get_rng_state(), ctx)
        aug_states = None
        if self.aug_gen is not None:
            aug_states = dist_.gather_states(self.aug_gen.get_state(), ctx)
        state = dict(s)
        part = s.get("partial")
        if part:
            keys = {"loss": part["loss"], "n": part["n"]}
            keys.update({f"terms/{k}": v for k, v in part["terms"].items()})
            total = dist_.all_reduce_sums(keys, ctx)
            state["partial"] = {
                **part,
                "loss": total["loss"],
                "n": int(total["n"]),
                "terms": {k: total[f"terms/{k}"] for k in part["terms"]},
            }
        if self.main:
            if self.scaler.is_enabled():
                state["scaler"] = self.scaler.state_dict()
            extra = {"rng/torch": torch_states[0]}
            if aug_states is not None:
                extra["rng/aug"] = aug_states[0]
            for r in range(1, ctx.world_size):
                extra[f"rng/torch/rank{r}"] = torch_states[r]
                if aug_states is not None:
                    extra[f"rng/aug/rank{r}"] = aug_states[r]
            state["world_size"] = ctx.world_size
            state["position_in_epoch"] = s["step_in_epoch"] * self.recipe.batch_size
            self.write_last(extra, state)
        dist_.barrier(ctx)  # a resume reads a complete checkpoint

    def write_last(self, extra: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        for k, v in self.task.state_dict().items():
            extra[f"task/{k}"] = v
        for cb, cb_name in zip(self.callbacks, _names(self.callbacks)):
            if hasattr(cb, "state_dict"):
                for k, v in cb.state_dict().items():
                    extra[f"cb/{cb_name}/{k}"] = v
        meta = {"recipe": self.recipe.to_dict(), "data": self.data_meta(), "state": state}
        save_checkpoint(self.last_path, self.model, self.optimizer, extra_tensors=extra, meta=meta)

    def data_meta(self) -> dict[str, Any]:
        """What a checkpoint records of its data: enough to feed the model later (a
        teacher for another dataset's student converts inputs with mean and std)."""
        data = self.data
        return {
            "spec": data.spec,
            "num_classes": data.num_classes,
            "in_chans": data.in_chans,
            "img_size": data.img_size,
            "mean": None if data.mean is None else [float(m) for m in data.mean],
            "std": None if data.std is None else [float(v) for v in data.std],
        }

    # ----- the loop ----------------------------------------------------------------
    def run(self, resume: bool) -> FitResult:
        self.start(resume)
        s, recipe = self.s, self.recipe
        self.t_call = time.perf_counter()
        self.time_before = s["train_time_s"]
        if (
            self.max_seconds is not None
            and self.time_before >= self.max_seconds
            and s["epoch"] < recipe.epochs
        ):
            s["status"] = "stopped_time"  # the budget was spent by earlier calls
        while s["epoch"] < recipe.epochs and s["status"] == "running":
            stop_reason = self.train_epoch()
            if s["status"] == "failed_nan":
                break
            if s["step_in_epoch"] < len(self.loader) and not self.steps_done():
                # stopped inside the epoch
                s["train_time_s"] = self.elapsed()
                s["status"] = stop_reason or "stopped"
                self.save_last()
                break
            self.end_epoch(stop_reason)
        return self.finish()

    def steps_done(self) -> bool:
        """Whether a recipe with a fixed ``total_steps`` has made all of them."""
        return bool(self.recipe.total_steps) and self.s["step"] >= self.recipe.total_steps

    def elapsed(self) -> float:
        return self.time_before + time.perf_counter() - self.t_call

    def make_batch(self, xb: torch.Tensor, yb: torch.Tensor, index: torch.Tensor) -> Batch:
        xb, yb = to_device(xb, self.dev), to_device(yb, self.dev)
        x, t = self.aug(xb, yb, self.aug_gen)
        views = [x] + [self.aug.view(xb, self.aug_gen) for _ in range(self.task.views - 1)]
        views = [_channels_last(v, self.recipe.channels_last) for v in views]
        labelled = self.task.uses_labels
        return Batch(
            views=views,
            targets=t if labelled else None,
            labels=yb if labelled else None,
            index=to_device(index, self.dev),
            raw=xb,
        )

    def train_epoch(self) -> str | None:
        s, recipe, state, task = self.s, self.recipe, self.state, self.task
        epoch, spe = s["epoch"], len(self.loader)
        if s["step_in_epoch"] == 0 or self.aug_gen is None:
            torch.manual_seed(_epoch_seed(recipe.seed, epoch))
            self.aug_gen = epoch_generator(recipe.seed, epoch, stream=2)
            if self.dist.rank > 0:  # other ranks draw their own dropout and augmentation
                r = self.dist.rank
                torch.manual_seed(dist_.rank_seed(_epoch_seed(recipe.seed, epoch), r))
                self.aug_gen.manual_seed(dist_.rank_seed(self.aug_gen.initial_seed(), r))
            s["step_in_epoch"] = 0
            s["partial"] = dict(loss=0.0, n=0, data_time=0.0, step_time=0.0, terms={})
        part = s["partial"]
        state.epoch, state.step, state.step_in_epoch = epoch, s["step"], s["step_in_epoch"]
        self.call("on_epoch_start", state)
        self.model.train()
        task.train(True)
        bar = None
        if self.show:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=spe,
                initial=s["step_in_epoch"],
                desc=f"epoch {epoch + 1}/{recipe.epochs}",
                leave=False,
                file=sys.stderr,
            )
        batches = self.loader.batches(epoch, start=s["step_in_epoch"], with_index=True)
        self.epoch_t0 = time.perf_counter()
        stop_reason = None
        while True:
            t0 = time.perf_counter()
            nxt = next(batches, None)
            if nxt is None:
                break
            batch = self.make_batch(*nxt)
            t1 = time.perf_counter()
            lr = recipe.lr_at(s["step"], spe)
            set_lr(self.optimizer, lr)
            state.lr = lr
            self.report_progress()
            self.call("on_train_batch_start", state, batch)
            with autocast(recipe.precision, self.dev):
                # under torchrun DDP runs the step, so gradients are averaged over ranks
                outputs = task.step(batch, state) if self.ddp is None else self.ddp(batch, state)
            loss = _loss_of(outputs, task)
            self.call("on_before_backward", state, loss)
            if not self.backward(loss, epoch, lr):
                s["status"] = "failed_nan"
                break
            self.call("on_before_optimizer_step", state)
            self.scaler.step(self.optimizer)  # disabled (not fp16): optimizer.step()
            self.scaler.update()
            t2 = time.perf_counter()
            b = len(batch)
            loss_value = float(loss.detach())
            part["loss"] += loss_value * b
            part["n"] += b
            part["data_time"] += t1 - t0
            part["step_time"] += t2 - t0
            for k, v in outputs.items():
                if k != "loss":
                    part["terms"][k] = part["terms"].get(k, 0.0) + float(v) * b
            s["step"] += 1
            s["step_in_epoch"] += 1
            s["images"] += b * self.dist.world_size
            s["step_time_s"] += t2 - t0
            s["data_time_s"] += t1 - t0
            state.step, state.step_in_epoch, state.loss = s["step"], s["step_in_epoch"], loss_value
            state.outputs = outputs
            self.report_progress()
            self.call("on_step_end", state)
            if bar is not None:
                bar.update(1)
                if s["step_in_epoch"] % 10 == 0:
                    bar.set_postfix(loss=f"{part['loss'] / part['n']:.3f}", lr=f"{lr:.2g}")
            if self.steps_done():
                break  # a steps or compute budget: the run ends inside its last epoch
            time_up = self.max_seconds is not None and self.elapsed() >= self.max_seconds
            stop = bool(state.stop)
            if self.dist.enabled:  # every rank stops after the same step
                time_up, stop = dist_.any_rank([time_up, stop], self.dist)
            if time_up:
                stop_reason = "stopped_time"
            elif stop:
                stop_reason = "stopped"
            if stop_reason:
                break
            every = recipe.checkpoint_every_steps
            if every and s["step"] % every == 0 and s["step_in_epoch"] < spe:
                s["train_time_s"] = self.elapsed()
                self.save_last()
        if bar is not None:
            bar.close()
        self.lr = recipe.lr_at(max(0, s["step"] - 1), spe)
        return stop_reason

    def backward(self, loss: torch.Tensor, epoch: int, lr: float) -> bool:
        """Backward and clipping; False (weights untouched) when the loss or norm is not finite."""
        bad = not math.isfinite(float(loss.detach()))
        if self.dist.enabled:  # a rank with a bad loss stops every rank
            bad = dist_.any_rank([bad], self.dist)[0]
        if not bad:
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.scaler.is_enabled():
                self.scaler.unscale_(self.optimizer)  # callbacks and clipping see true gradients
            self.call("on_after_backward", self.state)
            if self.recipe.grad_clip > 0:
                params = [*self.model.parameters(), *self.task.trainable.parameters()]
                norm = nn.utils.clip_grad_norm_(params, self.recipe.grad_clip)
                # with a scaler, overflowing gradients skip the step (scaler.step) instead
                bad = not math.isfinite(float(norm)) and not self.scaler.is_enabled()
        if bad:
            self.error = (
                f"loss became {float(loss.detach())} at epoch {epoch + 1}, step "
                f"{self.s['step_in_epoch'] + 1} (lr={lr:.3g}); weights were not updated. "
                "Kept the last good checkpoint"
                + (f" {self.last_path}" if self.last_path.is_file() else " (none was written yet)")
                + "; lower the learning rate, enable grad_clip, or use precision fp32"
            )
        return not bad

    def end_epoch(self, stop_reason: str | None) -> None:
        s, state, task = self.s, self.state, self.task
        epoch, part = s["epoch"], s["partial"]
        val = self.validate_model(self.model)
        if self.dist.enabled:  # the epoch's sums over all ranks
            sums = {"loss": part["loss"], "n": part["n"]}
            sums.update({f"terms/{k}": v for k, v in part["terms"].items()})
            sums = dist_.all_reduce_sums(sums, self.dist)
            part = {**part, "loss": sums["loss"], "n": int(sums["n"])}
            part["terms"] = {k: sums[f"terms/{k}"] for k in s["partial"]["terms"]}
        n = max(1, part["n"])
        record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": part["loss"] / n}
        for k, v in part["terms"].items():
            record[f"train_{k}"] = v / n
        record.update({f"val_{k}": v for k, v in val.items() if k != "n"})
        record.update(
            {
                "lr": self.lr,
                "epoch_time_s": time.perf_counter() - self.epoch_t0,
                "step_time_s": part["step_time"],
                "data_time_s": part["data_time"],
                "images_per_s": part["n"] / max(part["step_time"], 1e-9),
            }
        )
        if self.dist.enabled:
            record.update(self.batch_info())
        self.call("on_epoch_end", state, record)
        key, mode = task.monitor
        if key not in record:
            raise ValueError(
                f"task {task.name!r} monitors {key!r}, which the epoch record lacks "
                f"(it has {', '.join(sorted(record))})"
            )
        s["history"].append(record)
        s["epoch"] = epoch + 1
        s["step_in_epoch"] = 0
        s["final_val"] = val
        value, best = record[key], s["best_value"]
        if best is None or (value > best if mode == "max" else value < best):
            s["best_value"], s["best_epoch"] = value, epoch + 1
            if self.main:
                save_checkpoint(
                    self.best_path,
                    self.model,
                    meta={
                        "epoch": epoch + 1,
                        "val": val,
                        "monitor": key,
                        "recipe": self.recipe.to_dict(),
                        "data": self.data_meta(),
                    },
                )
        s["train_time_s"] = self.elapsed()
        if stop_reason:
            s["status"] = stop_reason
        self.save_last()
        if self.main:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def finish(self) -> FitResult:
        s = self.s
        if s["status"] != "failed_nan" and s["epoch"] >= self.recipe.epochs:
            s["status"] = "completed"
        if s["status"] != "failed_nan":
            s["train_time_s"] = self.elapsed()
        if s["status"] in ("stopped_time", "stopped") and s["step_in_epoch"] > 0:
            s["final_val"] = self.validate_model(self.model)
        best_epoch = s["best_epoch"]
        best_record = s["history"][best_epoch - 1] if best_epoch else {}
        result = FitResult(
            status=s["status"],
            epochs_completed=s["epoch"],
            history=list(s["history"]),
            best_val_top1=best_record.get("val_top1"),
            best_epoch=best_epoch,
            best_checkpoint=str(self.best_path)
            if self.best_path.is_file() and best_epoch
            else None,
            last_checkpoint=str(self.last_path) if self.last_path.is_file() else None,
            final_val=s["final_val"],
            train_time_s=s["train_time_s"],
            images_per_s=s["images"] / max(s["step_time_s"], 1e-9),
            data_time_share=s["data_time_s"] / max(s["step_time_s"], 1e-9),
            steps=s["step"],
            out_dir=str(self.out),
            error=self.error,
            monitor=self.task.monitor[0],
            best_metric=s["best_value"],
            runtime={
                "device": str(self.dev),
                "precision": self.recipe.precision,
                "channels_last": self.recipe.channels_last,
                "compile": self.recipe.compile,
            },
        )
        if self.dist.enabled:
            result.runtime.update(self.batch_info())
            result.runtime["backend"] = self.dist.backend
            result.runtime["sync_bn"] = self.sync_bn
            result.runtime["sync_bn_layers"] = self.runtime_sync_bn
        self.call("on_fit_end", self.state, result)  # callbacks may add to result.extras
        if self.main:
            text = json.dumps(result.to_dict(), indent=2, default=str) + "\n"
            atomic_write_text(self.out / "fit_result.json", text)
        dist_.barrier(self.dist)  # every rank returns once rank 0's files are complete
        return result

    def batch_info(self) -> dict[str, int]:
        """Processes and batches of a torchrun run: the effective (global) batch is the
        recipe's; each rank trains on its share."""
        world = self.dist.world_size
        return {
            "world_size": world,
            "effective_batch": self.recipe.batch_size,
            "per_rank_batch": self.recipe.batch_size // world,
        }


def _loss_of(outputs: Any, task: Task) -> torch.Tensor:
    if not isinstance(outputs, dict) or "loss" not in outputs:
        raise TypeError(
            f"task {task.name!r}: step() must return a dict with a 'loss' tensor, "
            f"got {type(outputs).__name__}"
        )
    loss = outputs["loss"]
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise TypeError(f"task {task.name!r}: step()['loss'] must be a scalar tensor")
    return loss.float().reshape(())
