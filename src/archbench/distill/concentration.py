"""Knowledge concentration: *Knowledge Concentration: Learning 100K Object Classifiers in a
Single CNN* (Gao, Guo, Li and Nevatia, 2017).

Several specialist teachers, each an expert on a subset of the classes (a "vertical"), are
distilled into one student that predicts every class. The paper's three parts:

1. Multi-teacher single-student distillation. Teacher ``k`` owns the classes ``C_k``
   (``classes[k]``); its soft targets supervise the student's logits restricted to
   ``C_k``. For sample ``i``::

       l_ik = T^2 * KL(softmax(z_t^k[C_k] / T) || softmax(z_s[C_k] / T))

   A teacher trained on the full class set gives its logits at ``C_k``; a specialist
   trained on ``C_k`` alone (as many outputs as ``C_k`` has classes) gives its own
   logits, in the order of ``classes[k]``. With ``route="label"`` (default) a teacher
   supervises only the samples of its own classes (a specialist has not seen the other
   verticals); with ``route="all"`` every teacher supervises every sample.
2. Self-paced learning. Each (sample, teacher) term is weighted by self-paced learning's
   closed form (Kumar, Packer and Koller, 2010), ``v_ik = 1[l_ik <= lambda_k]``, the
   minimiser over ``v`` in [0, 1] of ``sum_i v_ik * l_ik - lambda_k * sum_i v_ik``: the
   student first learns what each teacher teaches easily, and every ``lambda_k`` grows by
   ``spl_growth`` at the end of each epoch (Kumar et al.'s mu = 1.3) so that harder
   samples join. Each teacher has its own ``lambda_k``, started at the ``spl_start``
   quantile of its first training batch's losses, so the student learns from each teacher
   at its own pace: the terms of a teacher whose knowledge it absorbs quickly fall under
   ``lambda_k`` sooner.
3. Structurally connected layers (``connected_hidden > 0``): the student's classifier
   gets one hidden branch per teacher, ``Linear(features, hidden) -> ReLU ->
   Linear(hidden, |C_k|)``, connected only to that teacher's class logits and added to
   the original fully connected classifier (last layer zero-initialised, so training
   starts from the student as built): more capacity at the logits for few parameters.

The loss is ``(1 - alpha) * CE(z_s, targets) + alpha * (1/B) * sum_i sum_k v_ik * l_ik``.

Where archbench deviates, and why: the paper has no public code, and its datasets
(OpenImage, EFT) are multi-label; archbench's are single-label, so soft targets are
softmax distributions over each teacher's classes rather than per-class sigmoids. The
self-paced schedule (start quantile, growth per epoch) is Kumar et al.'s standard one,
made per teacher; ``temperature`` and ``alpha`` default to archbench's ``kd`` values.
The structurally connected layers are generic for every student whose
``get_classifier()`` is the ``nn.Linear`` its ``forward_head`` applies to the pooled
features (setup fails with a message otherwise). They change the student's weights:
the run's checkpoints hold ``<head>.base.*`` and ``<head>.branches.*``; rebuild the
model with :func:`add_connected_layers` before loading them.

This module also holds :class:`TeacherGroup`, the frozen teachers of the multi-teacher
tasks (``meal_v2`` and ``orc`` use it too).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..train import ClassificationTask, register_task, soft_cross_entropy
from ..train.evaluate import model_device
from .teacher import load_teacher, teacher_input_for

__all__ = [
    "ConnectedHead",
    "KnowledgeConcentration",
    "TeacherGroup",
    "add_connected_layers",
    "subset_kd_losses",
    "teacher_specs",
]


# ----- several frozen teachers -----------------------------------------------------------
def teacher_specs(teachers: Any, what: str = "teachers") -> list[str]:
    """The run folders of a ``teachers`` task argument: a list of paths (one path alone
    is a list of one)."""
    if isinstance(teachers, (str, Path)):
        teachers = [teachers]
    if not isinstance(teachers, (list, tuple)) or not teachers:
        raise ValueError(
            f"{what} must be a non-empty list of trained run folders, e.g. "
            f'--task-arg {what}=\'["runs/a", "runs/b"]\', got {teachers!r}'
        )
    bad = [t for t in teachers if not isinstance(t, (str, Path)) or not str(t)]
    if bad:
        raise ValueError(f"{what} must hold run folder paths, got {bad[0]!r}")
    return [str(t) for t in teachers]


class TeacherGroup(nn.Module):
    """Several trained teachers, each with the conversion of the student's batch into its
    input (:class:`TeacherInput`); ``forward`` gives each teacher's float logits.

    ``num_classes``: for each teacher, the class counts it may predict (``None``: the
    data's); a teacher predicting another count fails with the reason.
    """

    def __init__(
        self,
        specs: Sequence[str],
        data: Any,
        num_classes: Sequence[Sequence[int]] | None = None,
        what: str = "teachers",
    ) -> None:
        super().__init__()
        self.models = nn.ModuleList()
        self.inputs = nn.ModuleList()
        self.infos: list[dict[str, Any]] = []
        for i, spec in enumerate(specs):
            model, info = load_teacher(spec)
            predicted = info["data"].get("num_classes")
            allowed = list(num_classes[i]) if num_classes is not None else [data.num_classes]
            if predicted not in allowed:
                wanted = " or ".join(str(n) for n in allowed)
                raise ValueError(
                    f"{what}[{i}] {info['model']} ({spec}) predicts {predicted} classes but "
                    f"{wanted} are needed (dataset {data.spec!r} has {data.num_classes}); "
                    "train that teacher on the right classes"
                )
            self.models.append(model)
            self.inputs.append(teacher_input_for(info, data))
            self.infos.append(info)

    def __len__(self) -> int:
        return len(self.models)

    def num_outputs(self, i: int) -> int:
        return int(self.infos[i]["data"]["num_classes"])

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return [m(conv(images)).float() for m, conv in zip(self.models, self.inputs)]

    def check_out_dir(self, out_dir: Any) -> None:
        """Fail when the student would write into one of the teachers' run folders."""
        out = Path(out_dir).resolve()
        for info in self.infos:
            if out == Path(info["run_dir"]).resolve():
                raise ValueError(
                    f"the student's output folder {str(out)!r} is a teacher's run folder; "
                    "give the student another --out"
                )


# ----- the distillation terms --------------------------------------------------------------
def subset_kd_losses(
    student: torch.Tensor,
    teachers: Sequence[torch.Tensor],
    classes: Sequence[Sequence[int]],
    temperature: float,
) -> torch.Tensor:
    """``(B, K)``: ``T^2 * KL(softmax(t_k / T) || softmax(student[:, C_k] / T))`` per sample.

    ``teachers[k]`` holds teacher ``k``'s logits over ``classes[k]`` (already restricted).
    """
    t = float(temperature)
    columns = []
    for t_logits, cls in zip(teachers, classes):
        index = torch.as_tensor(list(cls), device=student.device, dtype=torch.long)
        log_p_s = F.log_softmax(student.float().index_select(1, index) / t, dim=-1)
        log_p_t = F.log_softmax(t_logits.float() / t, dim=-1)
        columns.append((log_p_t.exp() * (log_p_t - log_p_s)).sum(-1) * t * t)
    return torch.stack(columns, dim=1)


# ----- structurally connected layers -------------------------------------------------------
class ConnectedHead(nn.Module):
    """A fully connected classifier plus one hidden branch per class group, each branch
    connected only to its group's logits (Knowledge Concentration's structurally connected
    layers)."""

    def __init__(self, base: nn.Linear, groups: Sequence[Sequence[int]], hidden: int) -> None:
        super().__init__()
        self.base = base
        self.branches = nn.ModuleList()
        for i, group in enumerate(groups):
            branch = nn.Sequential(
                nn.Linear(base.in_features, hidden), nn.ReLU(), nn.Linear(hidden, len(group))
            )
            nn.init.zeros_(branch[2].weight)
            nn.init.zeros_(branch[2].bias)
            self.branches.append(branch)
            self.register_buffer(f"index{i}", torch.tensor(list(group)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        for i, branch in enumerate(self.branches):
            out = out.index_add(-1, getattr(self, f"index{i}"), branch(x).to(out.dtype))
        return out


def add_connected_layers(
    model: nn.Module, groups: Sequence[Sequence[int]], hidden: int
) -> ConnectedHead:
    """Replace ``model``'s classifier with a :class:`ConnectedHead` (in place)."""
    get = getattr(model, "get_classifier", None)
    clf = get() if callable(get) else None
    if not isinstance(clf, nn.Linear):
        raise ValueError(
            "structurally connected layers extend the student's classifier, an nn.Linear on "
            f"its pooled features; {type(model).__name__}.get_classifier() gives "
            f"{type(clf).__name__}: use connected_hidden=0 with this student"
        )
    path = next(name for name, m in model.named_modules() if m is clf)
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    head = ConnectedHead(clf, groups, hidden)
    setattr(parent, attr, head)
    return head


# ----- the task ------------------------------------------------------------------------------
@register_task("knowledge_concentration")
class KnowledgeConcentration(ClassificationTask):
    """Specialist teachers, each on its classes, distilled into one student (Gao et al.)."""

    def __init__(
        self,
        teachers: list[str],
        classes: list[list[int]] | None = None,
        temperature: float = 4.0,
        alpha: float = 0.5,
        route: str = "label",
        spl: bool = True,
        spl_start: float = 0.5,
        spl_growth: float = 1.3,
        connected_hidden: int = 0,
    ) -> None:
        super().__init__()
        self.teacher_list = teacher_specs(teachers)
        k = len(self.teacher_list)
        if classes is not None:
            if not isinstance(classes, (list, tuple)) or len(classes) != k:
                raise ValueError(
                    f"classes must list one class subset per teacher ({k} teachers), e.g. "
                    f"[[0, 1], [2, 3]]; got {classes!r}"
                )
            for i, cls in enumerate(classes):
                if (
                    not isinstance(cls, (list, tuple))
                    or not cls
                    or not all(isinstance(c, int) and not isinstance(c, bool) for c in cls)
                ):
                    raise ValueError(
                        f"classes[{i}] must be a non-empty list of class indices, got {cls!r}"
                    )
                if len(set(cls)) != len(cls):
                    raise ValueError(f"classes[{i}] lists a class twice: {list(cls)}")
            classes = [list(c) for c in classes]
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha (the distillation weight) must be in [0, 1], got {alpha}")
        if route not in ("label", "all"):
            raise ValueError(f"route must be 'label' or 'all', got {route!r}")
        if not 0.0 < spl_start <= 1.0:
            raise ValueError(f"spl_start (a quantile) must be in (0, 1], got {spl_start}")
        if spl_growth < 1.0:
            raise ValueError(f"spl_growth must be >= 1 (the pace only widens), got {spl_growth}")
        if int(connected_hidden) != connected_hidden or connected_hidden < 0:
            raise ValueError(f"connected_hidden must be an int >= 0, got {connected_hidden}")
        self.classes = classes
        self.temperature, self.alpha, self.route = float(temperature), float(alpha), route
        self.spl, self.spl_start, self.spl_growth = bool(spl), float(spl_start), float(spl_growth)
        self.connected_hidden = int(connected_hidden)
        self.spl_lambda = torch.zeros(k, dtype=torch.float64)
        self.spl_ready = torch.zeros(k, dtype=torch.uint8)

    # ----- set-up ------------------------------------------------------------------
    def setup(self, model: nn.Module, data: Any, recipe: Any) -> None:
        n = data.num_classes
        k = len(self.teacher_list)
        classes = self.classes if self.classes is not None else [list(range(n))] * k
        for i, cls in enumerate(classes):
            outside = [c for c in cls if not 0 <= c < n]
            if outside:
                raise ValueError(
                    f"classes[{i}] holds class {outside[0]} but dataset {data.spec!r} has "
                    f"{n} classes (0 to {n - 1})"
                )
        self.subsets = classes
        group = TeacherGroup(
            self.teacher_list, data, num_classes=[sorted({n, len(c)}) for c in classes]
        )
        # a teacher over every class is read at its subset; a specialist gives its subset
        self.full_teacher = [group.num_outputs(i) == n for i in range(k)]
        self.frozen["teachers"] = group
        if self.connected_hidden:
            head = add_connected_layers(model, classes, self.connected_hidden)
            ran: list[bool] = []
            handle = head.register_forward_hook(lambda *_: ran.append(True))
            was_training = model.training
            model.eval()
            try:
                with torch.no_grad():
                    model(data.val.images[:2].float().div(255.0).to(model_device(model)))
            finally:
                handle.remove()
                model.train(was_training)
            if not ran:
                raise ValueError(
                    f"{type(model).__name__}'s forward does not go through get_classifier(); "
                    "structurally connected layers cannot extend it: use connected_hidden=0"
                )

    def on_fit_start(self, state: Any) -> None:
        self.frozen["teachers"].check_out_dir(state.out_dir)

    # ----- the loss ----------------------------------------------------------------
    def teacher_terms(
        self, logits: torch.Tensor, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample losses ``l_ik`` (B, K) and which teacher supervises which sample."""
        with torch.no_grad():
            outs = self.frozen["teachers"](images)
        restricted = []
        for out, cls, full in zip(outs, self.subsets, self.full_teacher):
            if full:
                out = out.index_select(1, torch.as_tensor(cls, device=out.device))
            restricted.append(out)
        losses = subset_kd_losses(logits, restricted, self.subsets, self.temperature)
        if self.route == "all":
            mask = torch.ones_like(losses, dtype=torch.bool)
        else:
            mask = torch.stack(
                [
                    torch.isin(labels, torch.as_tensor(c, device=labels.device))
                    for c in self.subsets
                ],
                dim=1,
            )
        return losses, mask

    def spl_weights(self, losses: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Self-paced weights ``v_ik = 1[l_ik <= lambda_k]`` on supervised pairs (training)."""
        weights = mask.to(losses.dtype)
        if not self.spl:
            return weights
        for k in range(losses.shape[1]):
            chosen = mask[:, k]
            if not bool(self.spl_ready[k]) and bool(chosen.any()):
                first = losses[chosen, k].detach().double().cpu()
                self.spl_lambda[k] = torch.quantile(first, self.spl_start)
                self.spl_ready[k] = 1
            limit = float(self.spl_lambda[k])
            weights[:, k] = weights[:, k] * (losses[:, k].detach().double() <= limit).to(
                weights.dtype
            )
        return weights

    def step(self, batch: Any, state: Any) -> dict[str, Any]:
        logits = state.model(batch.images)
        ce = soft_cross_entropy(logits, batch.targets)
        losses, mask = self.teacher_terms(logits, batch.images, batch.labels)
        weights = self.spl_weights(losses, mask)
        b = logits.shape[0]
        paced = (weights * losses).sum() / b
        loss = (1 - self.alpha) * ce + self.alpha * paced
        acc = (logits.detach().argmax(-1) == batch.labels).float().mean()
        kept = weights.sum() / mask.sum().clamp(min=1)
        return {
            "loss": loss,
            "ce": ce.detach(),
            "kd": ((mask * losses).sum() / b).detach(),
            "spl_kd": paced.detach(),
            "spl_kept": kept.detach(),
            "acc": acc,
        }

    def eval_step(self, batch: Any, state: Any) -> dict[str, float]:
        metrics = super().eval_step(batch, state)
        logits = state.model(batch.images)
        losses, mask = self.teacher_terms(logits, batch.images, batch.labels)
        metrics["kd"] = float((mask * losses).sum() / logits.shape[0])
        return metrics

    # ----- the pace ----------------------------------------------------------------
    def on_epoch_end(self, state: Any, record: dict[str, Any]) -> None:
        if not self.spl:
            return
        ready = self.spl_ready.bool()
        self.spl_lambda[ready] = self.spl_lambda[ready] * self.spl_growth
        for k in range(len(self.spl_lambda)):
            record[f"spl_lambda{k}"] = float(self.spl_lambda[k])

    def state_dict(self) -> dict[str, torch.Tensor]:
        sd = super().state_dict()
        sd["spl_lambda"] = self.spl_lambda.clone()
        sd["spl_ready"] = self.spl_ready.clone()
        return sd

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        super().load_state_dict(sd)
        if "spl_lambda" in sd:
            self.spl_lambda = sd["spl_lambda"].detach().cpu().to(torch.float64).clone()
            self.spl_ready = sd["spl_ready"].detach().cpu().to(torch.uint8).clone()
