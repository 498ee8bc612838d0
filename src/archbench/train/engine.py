"""The training loop: ``fit(model, data, recipe, out_dir)`` and ``evaluate(model, data)``.

A plain PyTorch loop over in-memory batches with batched augmentation. What it writes in
``out_dir``::

    recipe.yaml                the frozen recipe of the run
    metrics.jsonl              one JSON record per finished epoch
    checkpoints/last.safetensors   weights + optimizer + RNG + callback state (resume point)
    checkpoints/best.safetensors   weights of the epoch with the best validation top-1
    fit_result.json            the FitResult of the latest call

Reproducibility: every epoch reseeds the global RNG (dropout, drop-path) and an
augmentation generator from (seed, epoch), and the shuffling order is a function of
(seed, epoch). A mid-epoch checkpoint also stores both generators' states, so a resumed
run replays exactly the remaining batches; in deterministic mode it ends with the same
weights as an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.base import DataBundle, ImageTensorDataset
from ..data.loader import BatchLoader, epoch_generator
from ..data.transforms import BatchAugment, normalize
from .callbacks import EMA, TrainState
from .checkpoint import atomic_write_text, load_checkpoint, read_checkpoint_meta, save_checkpoint
from .optim import build_optimizer, set_lr
from .recipe import Recipe, load_recipe

__all__ = ["FitResult", "check_model_data", "evaluate", "fit", "soft_cross_entropy"]

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against soft targets (label smoothing, Mixup, CutMix)."""
    return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _autocast(precision: str, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: DataBundle | ImageTensorDataset | torch.utils.data.Dataset | Iterable,
    *,
    split: str = "val",
    batch_size: int = 256,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    precision: str = "fp32",
) -> dict[str, float]:
    """Top-1, top-5 (top-k for k = min(5, classes)), mean cross-entropy and count.

    ``data``: a :class:`DataBundle` (its ``split``), an :class:`ImageTensorDataset`
    (normalized with ``mean``/``std`` or the bundle's), any map-style dataset of
    ``(image, label)``, or an iterable of ``(images, labels)`` batches ready for the
    model. The model's train/eval mode is restored afterwards.
    """
    if isinstance(data, DataBundle):
        data = data.split(split)
    dev = _device(model)
    if isinstance(data, ImageTensorDataset):
        m = mean if mean is not None else data.mean
        s = std if std is not None else data.std
        mt = torch.tensor(m if m is not None else [0.0] * data.images.shape[1])
        st = torch.tensor(s if s is not None else [1.0] * data.images.shape[1])

        def gen():
            for i in range(0, len(data), batch_size):
                x = data.images[i : i + batch_size].float().div_(255.0)
                yield normalize(x, mt, st), data.labels[i : i + batch_size]

        batches: Iterable = gen()
    elif isinstance(data, torch.utils.data.Dataset):
        batches = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
    else:
        batches = data
    was_training = model.training
    model.eval()
    n, correct1, correct5, loss_sum = 0, 0, 0, 0.0
    try:
        for x, y in batches:
            x, y = x.to(dev), torch.as_tensor(y).to(dev)
            with _autocast(precision, dev):
                logits = model(x)
            logits = logits.float()
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            k = min(5, logits.shape[-1])
            topk = logits.topk(k, dim=-1).indices
            hit = topk == y.view(-1, 1)
            correct1 += int(hit[:, 0].sum())
            correct5 += int(hit.any(dim=1).sum())
            n += len(y)
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError("evaluate: the data holds no samples")
    return {"top1": correct1 / n, "top5": correct5 / n, "loss": loss_sum / n, "n": n}


def check_model_data(model: nn.Module, data: DataBundle) -> None:
    """Fail before training when the model cannot take the data's images or classes."""
    in_chans = getattr(model, "in_chans", None)
    if isinstance(in_chans, int) and in_chans != data.in_chans:
        raise ValueError(
            f"the model takes in_chans={in_chans} but dataset {data.spec!r} has "
            f"{data.in_chans} channel(s); build the model with in_chans={data.in_chans} "
            f"(or load the data with channels={in_chans})"
        )
    num_classes = getattr(model, "num_classes", None)
    if isinstance(num_classes, int) and num_classes != data.num_classes:
        raise ValueError(
            f"the model has num_classes={num_classes} but dataset {data.spec!r} has "
            f"{data.num_classes} classes; build it with num_classes={data.num_classes}"
        )
    x = data.val.images[:2].float().div_(255.0).to(_device(model))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as err:
        raise ValueError(
            f"the model cannot take this dataset's images (batch {tuple(x.shape)}): {err}"
        ) from err
    finally:
        model.train(was_training)
    if out.ndim != 2 or out.shape[1] != data.num_classes:
        raise ValueError(
            f"the model returns shape {tuple(out.shape)}; expected (batch, {data.num_classes}) logits"
        )


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


def fit(
    model: nn.Module,
    data: DataBundle,
    recipe: Recipe | str,
    out_dir: str | Path,
    *,
    callbacks: Sequence[Any] = (),
    loss_terms: Sequence[Any] = (),
    resume: bool = True,
    max_seconds: float | None = None,
    progress: bool | None = None,
) -> FitResult:
    """Train ``model`` on ``data.train`` with ``recipe``; choose checkpoints on ``data.val``.

    ``resume``: continue from ``out_dir/checkpoints/last.safetensors`` when it exists
    (the recipe must be the same). ``max_seconds``: wall-clock budget for the whole run
    (time of earlier, resumed calls included); the run stops cleanly after the step that
    passes it, with a checkpoint, and status ``stopped_time``. ``progress``: show a
    progress bar (default: only when stderr is a terminal). ``recipe.ema`` adds an
    :class:`EMA` callback unless one is given.
    """
    recipe = load_recipe(recipe)
    if not isinstance(data, DataBundle):
        raise TypeError(
            f"fit expects a DataBundle from archbench.data.load_dataset, got {type(data).__name__}"
        )
    if max_seconds is not None and max_seconds <= 0:
        raise ValueError(f"max_seconds must be > 0, got {max_seconds}")
    check_model_data(model, data)
    out = Path(out_dir)
    ck_dir = out / "checkpoints"
    ck_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path = ck_dir / LAST, ck_dir / BEST
    metrics_path = out / "metrics.jsonl"
    callbacks = list(callbacks)
    if recipe.ema and not any(isinstance(c, EMA) for c in callbacks):
        callbacks.append(EMA(recipe.ema_decay))

    prev_det = torch.are_deterministic_algorithms_enabled()
    if recipe.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        return _fit(
            model,
            data,
            recipe,
            out,
            last_path,
            best_path,
            metrics_path,
            callbacks,
            list(loss_terms),
            resume,
            max_seconds,
            progress,
        )
    finally:
        torch.use_deterministic_algorithms(prev_det)


def _fit(
    model,
    data,
    recipe,
    out,
    last_path,
    best_path,
    metrics_path,
    callbacks,
    loss_terms,
    resume,
    max_seconds,
    progress,
) -> FitResult:
    dev = _device(model)
    loader = BatchLoader(
        data.train, recipe.batch_size, shuffle=True, drop_last=True, seed=recipe.seed
    )
    spe = len(loader)
    aug = BatchAugment(
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
    optimizer = build_optimizer(model, recipe)
    state = TrainState(
        model=model, optimizer=optimizer, recipe=recipe, data=data, out_dir=out, steps_per_epoch=spe
    )
    _call(callbacks, "on_fit_start", state)

    # ----- fresh start or resume ---------------------------------------------------
    s: dict[str, Any] = dict(
        epoch=0,
        step=0,
        step_in_epoch=0,
        history=[],
        best_top1=None,
        best_epoch=None,
        train_time_s=0.0,
        images=0,
        step_time_s=0.0,
        data_time_s=0.0,
        partial=None,
        final_val=None,
        status="running",
    )
    aug_gen: torch.Generator | None = None
    if resume and last_path.is_file():
        meta = read_checkpoint_meta(last_path)
        if meta.get("recipe") != recipe.to_dict():
            raise ValueError(
                f"{last_path} was written by a different recipe; use another out_dir, "
                "resume=False to start over, or the recipe in "
                f"{out / 'recipe.yaml'}"
            )
        ck = load_checkpoint(last_path, model, optimizer)
        s.update(ck["meta"]["state"])
        for cb, cb_name in zip(callbacks, _names(callbacks)):
            prefix = f"cb/{cb_name}/"
            sd = {k[len(prefix) :]: v for k, v in ck["extra"].items() if k.startswith(prefix)}
            if sd and hasattr(cb, "load_state_dict"):
                cb.load_state_dict(sd)
        if s["status"] in ("stopped_time", "stopped"):
            s["status"] = "running"
        if s["step_in_epoch"] > 0:
            torch.set_rng_state(ck["extra"]["rng/torch"])
            aug_gen = torch.Generator()
            aug_gen.set_state(ck["extra"]["rng/aug"])
    recipe.to_file(out / "recipe.yaml")
    _write_metrics(metrics_path, s["history"])

    def save_last() -> None:
        extra = {"rng/torch": torch.get_rng_state()}
        if aug_gen is not None:
            extra["rng/aug"] = aug_gen.get_state()
        for cb, cb_name in zip(callbacks, _names(callbacks)):
            if hasattr(cb, "state_dict"):
                for k, v in cb.state_dict().items():
                    extra[f"cb/{cb_name}/{k}"] = v
        meta = {
            "recipe": recipe.to_dict(),
            "data": {
                "spec": data.spec,
                "num_classes": data.num_classes,
                "in_chans": data.in_chans,
                "img_size": data.img_size,
            },
            "state": s,
        }
        save_checkpoint(last_path, model, optimizer, extra_tensors=extra, meta=meta)

    show = sys.stderr.isatty() if progress is None else bool(progress)
    t_call = time.perf_counter()
    time_before = s["train_time_s"]

    def elapsed() -> float:
        return time_before + time.perf_counter() - t_call

    error = None
    stop_reason = None
    lr = recipe.lr_at(s["step"], spe)
    if max_seconds is not None and time_before >= max_seconds and s["epoch"] < recipe.epochs:
        s["status"] = "stopped_time"  # the budget was spent by earlier calls
    while s["epoch"] < recipe.epochs and s["status"] == "running":
        epoch = s["epoch"]
        if s["step_in_epoch"] == 0 or aug_gen is None:
            torch.manual_seed(_epoch_seed(recipe.seed, epoch))
            aug_gen = epoch_generator(recipe.seed, epoch, stream=2)
            s["step_in_epoch"] = 0
            s["partial"] = dict(loss=0.0, correct=0, n=0, data_time=0.0, step_time=0.0, terms={})
        part = s["partial"]
        state.epoch, state.step, state.step_in_epoch = epoch, s["step"], s["step_in_epoch"]
        _call(callbacks, "on_epoch_start", state)
        model.train()
        bar = None
        if show:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=spe,
                initial=s["step_in_epoch"],
                desc=f"epoch {epoch + 1}/{recipe.epochs}",
                leave=False,
                file=sys.stderr,
            )
        batches = loader.batches(epoch, start=s["step_in_epoch"])
        epoch_t0 = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            nxt = next(batches, None)
            if nxt is None:
                break
            xb, yb = nxt
            x, t = aug(xb.to(dev), yb.to(dev), aug_gen)
            yb = yb.to(dev)
            t1 = time.perf_counter()
            lr = recipe.lr_at(s["step"], spe)
            set_lr(optimizer, lr)
            with _autocast(recipe.precision, dev):
                logits = model(x)
            loss = soft_cross_entropy(logits, t)
            total = loss
            term_vals = {}
            for term in loss_terms:
                v = term(logits, t, x, model)
                term_vals[getattr(term, "name", type(term).__name__)] = float(v.detach())
                total = total + v
            model_extra = getattr(model, "extra_loss", None)
            extra = model_extra(t) if callable(model_extra) else None
            if extra is not None:  # e.g. MoE load balancing, hierarchical prompt losses
                term_vals["model_extra_loss"] = float(extra.detach())
                total = total + extra
            bad = not math.isfinite(float(total.detach()))
            if not bad:
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                if recipe.grad_clip > 0:
                    norm = nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
                    bad = not math.isfinite(float(norm))
            if bad:
                error = (
                    f"loss became {float(total.detach())} at epoch {epoch + 1}, step {s['step_in_epoch'] + 1} "
                    f"(lr={lr:.3g}); weights were not updated. Kept the last good checkpoint"
                    + (f" {last_path}" if last_path.is_file() else " (none was written yet)")
                    + "; lower the learning rate, enable grad_clip, or use precision fp32"
                )
                s["status"] = "failed_nan"
                break
            optimizer.step()
            t2 = time.perf_counter()
            b = len(yb)
            part["loss"] += float(loss.detach()) * b
            part["correct"] += int((logits.detach().argmax(-1) == yb).sum())
            part["n"] += b
            part["data_time"] += t1 - t0
            part["step_time"] += t2 - t0
            for k, v in term_vals.items():
                part["terms"][k] = part["terms"].get(k, 0.0) + v * b
            s["step"] += 1
            s["step_in_epoch"] += 1
            s["images"] += b
            s["step_time_s"] += t2 - t0
            s["data_time_s"] += t1 - t0
            state.step, state.step_in_epoch, state.lr, state.loss = (
                s["step"],
                s["step_in_epoch"],
                lr,
                float(loss.detach()),
            )
            _call(callbacks, "on_step_end", state)
            if bar is not None:
                bar.update(1)
                if s["step_in_epoch"] % 10 == 0:
                    bar.set_postfix(loss=f"{part['loss'] / part['n']:.3f}", lr=f"{lr:.2g}")
            if max_seconds is not None and elapsed() >= max_seconds:
                stop_reason = "stopped_time"
            elif state.stop:
                stop_reason = "stopped"
            if stop_reason:
                break
            every = recipe.checkpoint_every_steps
            if every and s["step"] % every == 0 and s["step_in_epoch"] < spe:
                s["train_time_s"] = elapsed()
                save_last()
        if bar is not None:
            bar.close()
        if s["status"] == "failed_nan":
            break
        if s["step_in_epoch"] < spe:  # stopped inside the epoch: keep a resume point
            s["train_time_s"] = elapsed()
            s["status"] = stop_reason or "stopped"
            save_last()
            break
        # ----- end of epoch ---------------------------------------------------------
        val = evaluate(
            model, data.val, batch_size=recipe.eval_batch_size, precision=recipe.precision
        )
        n = max(1, part["n"])
        record = {
            "epoch": epoch + 1,
            "train_loss": part["loss"] / n,
            "train_acc": part["correct"] / n,
            "val_loss": val["loss"],
            "val_top1": val["top1"],
            "val_top5": val["top5"],
            "lr": lr,
            "epoch_time_s": time.perf_counter() - epoch_t0,
            "step_time_s": part["step_time"],
            "data_time_s": part["data_time"],
            "images_per_s": part["n"] / max(part["step_time"], 1e-9),
        }
        for k, v in part["terms"].items():
            record[f"train_{k}"] = v / n
        _call(callbacks, "on_epoch_end", state, record)
        s["history"].append(record)
        s["epoch"] = epoch + 1
        s["step_in_epoch"] = 0
        s["final_val"] = val
        if s["best_top1"] is None or val["top1"] > s["best_top1"]:
            s["best_top1"], s["best_epoch"] = val["top1"], epoch + 1
            save_checkpoint(
                best_path,
                model,
                meta={
                    "epoch": epoch + 1,
                    "val": val,
                    "recipe": recipe.to_dict(),
                    "data": {"spec": data.spec},
                },
            )
        s["train_time_s"] = elapsed()
        if stop_reason:
            s["status"] = stop_reason
        save_last()
        with open(metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
    if s["status"] != "failed_nan" and s["epoch"] >= recipe.epochs:
        s["status"] = "completed"
    if s["status"] != "failed_nan":
        s["train_time_s"] = elapsed()
    if s["status"] in ("stopped_time", "stopped") and s["step_in_epoch"] > 0:
        s["final_val"] = evaluate(
            model, data.val, batch_size=recipe.eval_batch_size, precision=recipe.precision
        )
    result = FitResult(
        status=s["status"],
        epochs_completed=s["epoch"],
        history=list(s["history"]),
        best_val_top1=s["best_top1"],
        best_epoch=s["best_epoch"],
        best_checkpoint=str(best_path) if best_path.is_file() and s["best_epoch"] else None,
        last_checkpoint=str(last_path) if last_path.is_file() else None,
        final_val=s["final_val"],
        train_time_s=s["train_time_s"],
        images_per_s=s["images"] / max(s["step_time_s"], 1e-9),
        data_time_share=s["data_time_s"] / max(s["step_time_s"], 1e-9),
        steps=s["step"],
        out_dir=str(out),
        error=error,
    )
    _call(callbacks, "on_fit_end", state, result)  # callbacks may add to result.extras
    atomic_write_text(
        out / "fit_result.json", json.dumps(result.to_dict(), indent=2, default=str) + "\n"
    )
    return result
