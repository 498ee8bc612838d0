"""Teachers for distillation: any trained registered model, frozen, fed the student's batch.

A teacher is named by a run folder (``archbench train`` or one run of a comparison), a
checkpoint inside one, or a ``.safetensors`` file beside a ``model.json``. The student's
normalized images are converted for the teacher: back to pixels with the student data's
mean and std, normalized with the teacher's (recorded in its checkpoint), resized to the
teacher's image size and given its channel count.

:class:`DistillationTask` is the base of every method in this package: it loads the
teacher in ``setup``, checks that teacher and student predict the same classes, and
gives the teacher's logits (optionally from a cache on disk) and intermediate features
(``forward_intermediates``, so any pair of families works without new code).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ..models import create_model
from ..runs import MODEL_JSON, locate_checkpoint
from ..train import ClassificationTask, load_checkpoint, read_checkpoint_meta
from ..train.checkpoint import atomic_write_text

__all__ = ["DistillationTask", "TeacherInput", "load_teacher", "teacher_input_for"]

_AUG_FIELDS = (
    "batch_size",
    "seed",
    "crop",
    "crop_scale",
    "crop_ratio",
    "crop_pad",
    "hflip",
    "cutout",
    "mixup_alpha",
    "cutmix_alpha",
    "mix_prob",
    "switch_prob",
    "label_smoothing",
)


def load_teacher(spec: str | Path, which: str = "best") -> tuple[nn.Module, dict[str, Any]]:
    """A trained model in eval mode with frozen weights, and what it was trained on.

    The returned info holds ``model``, ``kwargs``, ``checkpoint``, ``run_dir`` and
    ``data`` (``num_classes``, ``in_chans``, ``img_size``, ``mean``, ``std`` where the
    checkpoint records them).
    """
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(
            f"teacher {str(spec)!r} does not exist; give a trained run folder or its "
            "checkpoint (archbench train TEACHER ... --out DIR, or archbench distill, which "
            "trains a teacher given by model name first)"
        )
    ck, run = locate_checkpoint(path, which)
    info = json.loads((run / MODEL_JSON).read_text())
    model = create_model(info["model"], **info["kwargs"])
    try:
        load_checkpoint(ck, model)
    except (RuntimeError, ValueError, KeyError) as err:
        raise ValueError(
            f"teacher checkpoint {str(ck)!r} does not fit {info['model']} built with "
            f"{info['kwargs']}: {str(err).splitlines()[0]}"
        ) from None
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    data = dict(read_checkpoint_meta(ck).get("data") or {})
    data.setdefault("num_classes", getattr(model, "num_classes", None))
    data.setdefault("in_chans", getattr(model, "in_chans", None))
    data.setdefault("img_size", info["kwargs"].get("img_size"))
    return model, {**info, "checkpoint": str(ck), "run_dir": str(run), "data": data}


class TeacherInput(nn.Module):
    """Converts the student's normalized batch into the teacher's input.

    ``x * std_s + mean_s`` gives pixels in [0, 1]; they are normalized with the
    teacher's statistics, resized (bilinear, no antialias) to its image size, and
    converted to its channel count (gray to RGB by repetition, RGB to gray by the
    ITU-R 601 luma weights).
    """

    def __init__(
        self,
        student_mean: Any,
        student_std: Any,
        teacher_mean: Any,
        teacher_std: Any,
        in_chans: int,
        teacher_chans: int,
        teacher_size: int | None,
    ) -> None:
        super().__init__()

        def vec(v: Any, channels: int) -> torch.Tensor:
            t = torch.tensor([0.0] * channels if v is None else [float(a) for a in v])
            return t.view(1, -1, 1, 1)

        self.register_buffer("s_mean", vec(student_mean, in_chans), persistent=False)
        self.register_buffer(
            "s_std", vec(student_std or [1.0] * in_chans, in_chans), persistent=False
        )
        self.register_buffer("t_mean", vec(teacher_mean, teacher_chans), persistent=False)
        self.register_buffer(
            "t_std", vec(teacher_std or [1.0] * teacher_chans, teacher_chans), persistent=False
        )
        self.in_chans, self.teacher_chans, self.teacher_size = in_chans, teacher_chans, teacher_size
        self.identity = (
            in_chans == teacher_chans
            and torch.equal(self.s_mean, self.t_mean)
            and torch.equal(self.s_std, self.t_std)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.identity:
            x = x * self.s_std + self.s_mean
            if self.in_chans == 1 and self.teacher_chans == 3:
                x = x.expand(-1, 3, -1, -1)
            elif self.in_chans == 3 and self.teacher_chans == 1:
                w = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype)
                x = (x * w.view(1, 3, 1, 1)).sum(1, keepdim=True)
            x = (x - self.t_mean) / self.t_std
        size = self.teacher_size
        if size is not None and tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return x


def teacher_input_for(info: dict[str, Any], data: Any) -> TeacherInput:
    """The conversion of ``data``'s normalized batches into one teacher's input."""
    t_data = info["data"]
    same_data = t_data.get("mean") is None and t_data.get("spec") == data.spec
    return TeacherInput(
        data.mean,
        data.std,
        data.mean if same_data else t_data.get("mean"),
        data.std if same_data else t_data.get("std"),
        data.in_chans,
        int(t_data.get("in_chans") or data.in_chans),
        t_data.get("img_size") if t_data.get("img_size") != data.img_size else None,
    )


class DistillationTask(ClassificationTask):
    """Base of the distillation tasks: the teacher, its input conversion and its cache.

    Arguments every method shares: ``teacher`` (run folder or checkpoint), ``cache``
    (a folder for the teacher's logits: computed once per teacher, data, augmentation
    and seed, then reused by every student; only for methods whose teacher sees exactly
    the student's batch, ``cacheable = True``).
    """

    cacheable = True  # the teacher's logits depend on the batch alone
    match_classes = True  # the teacher must predict the data's classes (False: features only)

    def __init__(self, teacher: str, cache: str = "") -> None:
        super().__init__()
        self.teacher_spec = str(teacher)
        self.cache_dir = str(cache)
        if cache and not self.cacheable:
            raise ValueError(
                f"{type(self).__name__} cannot cache its teacher's outputs (its teacher does "
                "not see exactly the student's batch); leave cache empty"
            )
        self._cache_epoch: int | None = None
        self._cache_store: dict[str, torch.Tensor] = {}
        self._cache_read: dict[str, torch.Tensor] | None = None
        self._cache_complete = False

    # ----- set-up ------------------------------------------------------------------
    def check_student(self, model: nn.Module) -> None:
        """Fail when the method cannot train this student (a comparison calls it on every
        student, built on the meta device, before anything trains)."""

    def setup(self, model: nn.Module, data: Any, recipe: Any) -> None:
        self.check_student(model)
        teacher, info = load_teacher(self.teacher_spec)
        t_classes = info["data"].get("num_classes")
        if self.match_classes and t_classes != data.num_classes:
            raise ValueError(
                f"the teacher {info['model']} ({self.teacher_spec}) predicts {t_classes} classes "
                f"but dataset {data.spec!r} has {data.num_classes}; train a teacher on the "
                "same classes"
            )
        self.teacher_info = info
        self.frozen["input"] = teacher_input_for(info, data)
        self.frozen["teacher"] = teacher
        if self.cache_dir:
            self.cache_path = Path(self.cache_dir) / self._cache_key(data, recipe)
            self.cache_path.mkdir(parents=True, exist_ok=True)

    def on_fit_start(self, state: Any) -> None:
        out = Path(state.out_dir).resolve()
        if out == Path(self.teacher_info["run_dir"]).resolve():
            raise ValueError(
                f"the student's output folder {str(out)!r} is the teacher's run folder; "
                "give the student another --out"
            )

    def teacher_input(self, images: torch.Tensor) -> torch.Tensor:
        return self.frozen["input"](images)

    # ----- teacher outputs ---------------------------------------------------------
    @torch.no_grad()
    def teacher_logits(self, batch: Any, state: Any) -> torch.Tensor:
        """The teacher's logits for ``batch.images`` (from the cache when one is set)."""
        if not self.cache_dir or not state.model.training:
            return self.frozen["teacher"](self.teacher_input(batch.images)).float()
        self._cache_open(state.epoch, state.step_in_epoch)
        key = f"step{state.step_in_epoch}"
        if self._cache_read is not None:
            if not torch.equal(self._cache_read[f"{key}.index"], batch.index.cpu()):
                raise ValueError(
                    f"teacher cache {self.cache_path} holds other samples for epoch "
                    f"{state.epoch + 1}, step {state.step_in_epoch + 1}; delete it"
                )
            return self._cache_read[f"{key}.logits"].to(batch.images.device)
        logits = self.frozen["teacher"](self.teacher_input(batch.images)).float()
        self._cache_store[f"{key}.logits"] = logits.detach().cpu().contiguous()
        self._cache_store[f"{key}.index"] = batch.index.detach().cpu().contiguous()
        return logits

    def teacher_features(self, images: torch.Tensor, indices: Any = None) -> list[torch.Tensor]:
        """The teacher's ``forward_intermediates`` (no gradient)."""
        with torch.no_grad():
            return self.frozen["teacher"].forward_intermediates(self.teacher_input(images), indices)

    # ----- the cache ---------------------------------------------------------------
    def _cache_key(self, data: Any, recipe: Any) -> str:
        ck = Path(self.teacher_info["checkpoint"])
        digest = hashlib.sha256(ck.read_bytes()).hexdigest()
        ident = {
            "teacher": digest,
            "data": data.spec,
            "aug": {k: getattr(recipe, k) for k in _AUG_FIELDS},
        }
        return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[
            :16
        ]

    def _cache_open(self, epoch: int, step_in_epoch: int) -> None:
        if self._cache_epoch == epoch:
            return
        self._cache_epoch, self._cache_store = epoch, {}
        path = self.cache_path / f"epoch{epoch}.safetensors"
        self._cache_read = load_file(str(path)) if path.is_file() else None
        # an epoch is stored only when this process saw it from its first step
        self._cache_complete = step_in_epoch == 0

    def on_epoch_end(self, state: Any, record: dict[str, Any]) -> None:
        if not self.cache_dir or self._cache_read is not None or not self._cache_complete:
            return
        if len(self._cache_store) == 2 * state.steps_per_epoch:
            path = self.cache_path / f"epoch{state.epoch}.safetensors"
            tmp = path.with_name(path.name + ".tmp")
            save_file(self._cache_store, str(tmp))
            tmp.replace(path)
            atomic_write_text(
                self.cache_path / "teacher.json",
                json.dumps({"teacher": self.teacher_spec}, indent=2) + "\n",
            )
        self._cache_store = {}
