"""Multi-step distillation through automatically sized teacher assistants: *AMD: Automatic
Multi-step Distillation of Large-scale Vision Models* (Han et al., ECCV 2024).

A teacher far larger than its student teaches it poorly; AMD distils the teacher into a
teacher assistant (TA) of intermediate size and the TA into the student, and chooses the
TA's size automatically. The paper's three phases, and what archbench does for each:

1. **Candidates** (the paper's structural pruning with "gridding"): the scale range between
   the student and the teacher is cut into a grid, one TA candidate per point. archbench's
   candidates are width-scaled versions of one registered model (by default the teacher's
   own architecture, as the paper's TAs are pruned teachers): each declared width argument
   (``width_args``) times a multiplier, integer widths rounded to multiples of 8. Pass
   ``candidates`` (multipliers), or let :func:`amd_distill` grid the parameter range into
   ``grid`` points. The scale S of a model is its parameter count at the data's classes,
   channels and size.
2. **Evaluation** (the paper's joint optimization: every candidate is trained in one run as
   a weight-sharing sub-network of the teacher, so that each gets a performance estimate
   P without a run of its own). archbench's candidates are independent models that cannot
   share weights, so a candidate's P is the validation top-1 of a short *probe* run
   (``search_epochs`` epochs of the step's distillation task from the current teacher),
   and the candidate grid is searched instead of probed in full: a ternary search over
   the candidates sorted by scale finds the maximum of the criterion while probing
   O(log m) of m candidates (``search="exhaustive"`` probes all of them). The search is
   exact when the criterion is unimodal along the grid; the student probe (P_s) is one
   more short run per step.
3. **Selection** by the paper's negative performance-scale derivative (NPSD). archbench
   reads it as the slope of the performance-scale curve between a candidate and the
   student, the performance lost per unit of scale removed when going from the TA down to
   the student: ``NPSD_i = (P_i - P_s) / (S_i - S_s)`` (P in top-1 fractions, S in
   millions of parameters), and takes the candidate that maximizes it: the TA that carries
   the most performance above the student for each parameter it adds. Along a curve that
   stays flat from the teacher down and then falls off, the maximum is the smallest
   candidate before the fall. The exact normalization of the paper's NPSD could not be
   checked against its text or code (no official code is public), so this reading is
   archbench's.

Each distillation step trains with ``amd_step``: the paper's per-step objective has a
cross-entropy, a logit-distillation and a feature-mimicking term; archbench writes it as
``(1 - alpha) * CE(z_s, y) + alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) +
feature_weight * MSE(W f_s, f_t)``, with f the pooled pre-logit features
(``forward_head(..., pre_logits=True)``) and W a linear projector (identity when the
widths agree). The paper's weights of the three terms are not known here; the defaults
(T = 4, alpha = 1/2, feature weight 1) are archbench's ``kd`` defaults plus a unit feature
weight.

The paper's experiments use one TA; ``max_assistants > 1`` repeats the selection between
the last TA (as the new teacher) and the student, among the candidates smaller than it.
Every run is a folder of its own with the ``model.json`` that ``archbench train`` writes,
so each TA is an ordinary teacher for the next step and ``archbench eval`` reads any of
them; ``amd.json`` in the output folder records the candidates, every probe, the
criterion's values and the choice.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data import load_dataset
from ..models import create_model
from ..runs import MODEL_JSON
from ..train import fit, load_recipe, register_task, soft_cross_entropy
from ..train.checkpoint import atomic_write_text
from .logit import LogitDistillation, kd_loss
from .teacher import load_teacher

__all__ = [
    "AMDStep",
    "amd_distill",
    "amd_step_loss",
    "npsd",
    "scale_widths",
    "search_assistant",
]

AMD_JSON = "amd.json"


# ----- the per-step task ----------------------------------------------------------------
def _val_batch(data: Any) -> torch.Tensor:
    """The first two validation images, normalized as training batches are."""
    x = data.val.images[:2].float().div(255.0)
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    return (x - mean) / torch.tensor(data.std).view(1, -1, 1, 1)


def amd_step_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    student_features: torch.Tensor,
    teacher_features: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    alpha: float,
    feature_weight: float,
) -> dict[str, torch.Tensor]:
    """The three terms of one AMD step and their weighted sum (``loss``).

    ``student_features`` are already projected to the teacher's width; ``targets`` are soft
    targets (B, classes). The feature term is the mean squared error over batch and width.
    """
    ce = soft_cross_entropy(student_logits, targets)
    kd = kd_loss(student_logits, teacher_logits, temperature)
    feat = F.mse_loss(student_features.float(), teacher_features.float())
    loss = (1 - alpha) * ce + alpha * kd + feature_weight * feat
    return {"loss": loss, "ce": ce, "kd": kd, "feat": feat}


@register_task("amd_step")
class AMDStep(LogitDistillation):
    """One step of AMD's chain (teacher to TA, or TA to student): cross-entropy, logit
    distillation and mimicking of the teacher's pooled pre-logit features."""

    def __init__(
        self,
        teacher: str,
        temperature: float = 4.0,
        alpha: float = 0.5,
        feature_weight: float = 1.0,
    ) -> None:
        super().__init__(teacher, temperature=temperature, alpha=alpha)
        if feature_weight < 0:
            raise ValueError(f"feature_weight must be >= 0, got {feature_weight}")
        self.feature_weight = float(feature_weight)

    def setup(self, model: nn.Module, data: Any, recipe: Any) -> None:
        super().setup(model, data, recipe)
        x = _val_batch(data)
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                feats = model.forward_features(x.to(device))
                c_s = model.forward_head(feats, pre_logits=True).shape[-1]
                _, f_t = self._teacher_outputs(x)  # the teacher is on the CPU until fit moves it
        finally:
            model.train(was_training)
        c_t = f_t.shape[-1]
        projector: nn.Module = nn.Identity()
        if c_s != c_t:
            # drawn from the recipe's seed: the start does not depend on the caller's state
            projector = nn.Linear(c_s, c_t)
            gen = torch.Generator().manual_seed(int(recipe.seed))
            with torch.no_grad():
                nn.init.trunc_normal_(projector.weight, std=0.02, generator=gen)
                projector.bias.zero_()
        self.trainable["projector"] = projector

    @torch.no_grad()
    def _teacher_outputs(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        teacher = self.frozen["teacher"]
        feats = teacher.forward_features(self.teacher_input(images))
        pre = teacher.forward_head(feats, pre_logits=True)
        return teacher.forward_head(feats).float(), pre.float()

    def _terms(self, batch: Any, state: Any) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        model = state.model
        feats = model.forward_features(batch.images)
        logits = model.forward_head(feats)
        pre = model.forward_head(feats, pre_logits=True)
        t_logits, t_pre = self._teacher_outputs(batch.images)
        terms = amd_step_loss(
            logits,
            t_logits,
            self.trainable["projector"](pre),
            t_pre,
            batch.targets,
            self.temperature,
            self.alpha,
            self.feature_weight,
        )
        return terms, logits

    def step(self, batch: Any, state: Any) -> dict[str, Any]:
        terms, logits = self._terms(batch, state)
        acc = (logits.detach().argmax(-1) == batch.labels).float().mean()
        out = {k: (v if k == "loss" else v.detach()) for k, v in terms.items()}
        return {**out, "acc": acc}

    def eval_step(self, batch: Any, state: Any) -> dict[str, float]:
        metrics = super(LogitDistillation, self).eval_step(batch, state)
        terms, _ = self._terms(batch, state)
        metrics.update(kd=float(terms["kd"]), feat=float(terms["feat"]))
        return metrics


# ----- candidates ----------------------------------------------------------------------
def _is_width(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    return isinstance(value, (tuple, list)) and bool(value) and all(_is_width(v) for v in value)


def _times(value: Any, multiplier: float, divisor: int) -> Any:
    if isinstance(value, (tuple, list)):
        return type(value)(_times(v, multiplier, divisor) for v in value)
    if isinstance(value, float):
        return value * multiplier
    return max(1, round(value * multiplier / divisor)) * divisor


def _declared_widths(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The declared width arguments of ``name`` built with ``kwargs``, and their values."""
    with torch.device("meta"):
        model = create_model(name, **kwargs)
    declared = tuple(getattr(type(model), "width_args", ()))
    if not declared:
        raise ValueError(
            f"{name}: its class {type(model).__name__} declares no width_args, so AMD cannot "
            "build assistants of other sizes from it; give another assistant model"
        )
    built = getattr(model, "build_args", {})
    return {k: built[k] for k in declared if _is_width(built.get(k))}


def scale_widths(
    name: str, multiplier: float, kwargs: dict[str, Any] | None = None, divisor: int = 8
) -> dict[str, Any]:
    """Build arguments of ``name`` with every declared width argument times ``multiplier``.

    ``kwargs`` are the other build arguments (kept); integer widths are rounded to
    multiples of ``divisor`` (at least one), float widths (width multipliers) scaled as
    they are. Fails when the model's class declares no ``width_args``.
    """
    if not multiplier > 0:
        raise ValueError(f"a width multiplier must be > 0, got {multiplier}")
    kwargs = dict(kwargs or {})
    widths = _declared_widths(name, kwargs)
    return {**kwargs, **{k: _times(v, multiplier, divisor) for k, v in widths.items()}}


def _params(name: str, kwargs: dict[str, Any]) -> int:
    with torch.device("meta"):
        model = create_model(name, **kwargs)
    return sum(p.numel() for p in model.parameters())


def _grid_multipliers(
    name: str, kwargs: dict[str, Any], low: float, high: float, grid: int
) -> list[float]:
    """The paper's gridding: for each of ``grid`` parameter counts evenly spaced strictly
    between ``low`` and ``high``, the width multiplier (of 2^(j/64), 1/64 to 2) whose
    rounded widths come nearest; sizes outside (low, high) and repeats are left out."""
    widths = _declared_widths(name, kwargs)
    sizes: dict[str, tuple[float, int]] = {}  # distinct widths -> (first multiplier, params)
    for j in range(-384, 65):
        mult = 2.0 ** (j / 64)
        scaled = {k: _times(v, mult, 8) for k, v in widths.items()}
        key = json.dumps(scaled, sort_keys=True)
        if key not in sizes:
            try:
                sizes[key] = (mult, _params(name, {**kwargs, **scaled}))
            except (ValueError, RuntimeError, AssertionError):
                continue  # widths this family cannot take (heads that do not divide them)
    inside = [(m, n) for m, n in sizes.values() if low < n < high]
    chosen = set()
    for k in range(1, grid + 1):
        target = low + k * (high - low) / (grid + 1)
        if inside:
            chosen.add(min(inside, key=lambda mn: (abs(mn[1] - target), mn[0]))[0])
    return sorted(chosen)


# ----- the criterion and the search -----------------------------------------------------
def npsd(perf: float, scale: float, student_perf: float, student_scale: float) -> float:
    """AMD's negative performance-scale derivative of a candidate, as archbench reads it:
    the performance lost per unit of scale removed from the candidate down to the student,
    ``(P_i - P_s) / (S_i - S_s)``. Larger is a better assistant."""
    if scale <= student_scale:
        raise ValueError(
            f"a candidate's scale ({scale}) must exceed the student's ({student_scale})"
        )
    return (perf - student_perf) / (scale - student_scale)


def search_assistant(
    scales: Sequence[float],
    probe: Callable[[int], float],
    student_perf: float,
    student_scale: float,
    search: str = "ternary",
) -> tuple[int, dict[int, float]]:
    """The index of the candidate with the largest NPSD, and the NPSD of every candidate
    probed (by index). ``scales`` must be increasing; ``probe(i)`` gives candidate i's
    performance and is called at most once per candidate.

    ``search="ternary"`` assumes NPSD is unimodal along the grid and probes O(log m)
    candidates; ``"exhaustive"`` probes all of them. Ties go to the smaller candidate.
    """
    if search not in ("ternary", "exhaustive"):
        raise ValueError(f"search must be 'ternary' or 'exhaustive', got {search!r}")
    if not scales:
        raise ValueError("no assistant candidates to search")
    if any(b <= a for a, b in zip(scales, scales[1:], strict=False)):
        raise ValueError(f"candidate scales must be strictly increasing, got {list(scales)}")
    values: dict[int, float] = {}

    def value(i: int) -> float:
        if i not in values:
            values[i] = npsd(probe(i), scales[i], student_perf, student_scale)
        return values[i]

    lo, hi = 0, len(scales) - 1
    if search == "ternary":
        while hi - lo > 2:
            third = (hi - lo) // 3
            m1, m2 = lo + third, hi - third
            if value(m1) < value(m2):
                lo = m1 + 1
            elif value(m1) > value(m2):
                hi = m2 - 1
            else:
                lo, hi = m1, m2
    for i in range(lo, hi + 1):
        value(i)
    best = max(sorted(values), key=lambda i: (values[i], -i))
    return best, values


# ----- the chain ----------------------------------------------------------------------
def _write_model_json(out: Path, name: str, kwargs: dict[str, Any], spec: str, seed: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    info = {"model": name, "kwargs": kwargs, "data": spec, "data_seed": seed}
    atomic_write_text(out / MODEL_JSON, json.dumps(info, indent=2) + "\n")


def _train(
    name: str,
    kwargs: dict[str, Any],
    teacher: str,
    data: Any,
    spec: str,
    data_seed: int,
    recipe: Any,
    task_args: dict[str, Any],
    out: Path,
    progress: bool,
) -> dict[str, Any]:
    """One ``amd_step`` run of ``name`` from ``teacher`` in its own folder (resumes)."""
    _write_model_json(out, name, kwargs, spec, data_seed)
    torch.manual_seed(recipe.seed)
    model = create_model(name, **kwargs)
    step_recipe = recipe.replace(task="amd_step", task_args={"teacher": teacher, **task_args})
    res = fit(model, data, step_recipe, out, progress=progress)
    if res.status != "completed":
        raise RuntimeError(f"AMD run {out} ended with status {res.status}: {res.error}")
    return {
        "run": str(out),
        "model": name,
        "kwargs": kwargs,
        "val_top1": res.best_val_top1,
        "epochs": res.epochs_completed,
    }


def amd_distill(
    teacher_dir: str | Path,
    student_name: str,
    data_spec: str,
    recipe: Any,
    out_dir: str | Path,
    candidates: Sequence[float] | None = None,
    *,
    student_args: dict[str, Any] | None = None,
    assistant: str | None = None,
    assistant_args: dict[str, Any] | None = None,
    grid: int = 9,
    max_assistants: int = 1,
    search: str = "ternary",
    search_epochs: int = 1,
    temperature: float = 4.0,
    alpha: float = 0.5,
    feature_weight: float = 1.0,
    data_seed: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Distil the trained teacher in ``teacher_dir`` into ``student_name`` through
    automatically sized teacher assistants; returns (and writes to ``out_dir/amd.json``)
    the record of the chain.

    ``candidates``: width multipliers of the assistant model (``assistant``, by default
    the teacher's architecture built with the teacher's arguments; ``assistant_args``
    replace them); without them the parameter range between student and teacher is
    gridded into ``grid`` points. Every candidate must lie strictly between the student
    and the teacher in parameters. ``recipe`` (a Recipe or a recipe name) trains every
    step; probes use it with ``search_epochs`` epochs. Folders: ``search/step<k>/...``
    (probes), ``step<k>_assistant`` and ``step<k>_student`` (the chain). Re-running with
    the same arguments resumes the runs and returns the same record.
    """
    recipe = load_recipe(recipe)
    if max_assistants < 1:
        raise ValueError(f"max_assistants must be >= 1, got {max_assistants}")
    if search_epochs < 1:
        raise ValueError(f"search_epochs must be >= 1, got {search_epochs}")
    if search not in ("ternary", "exhaustive"):
        raise ValueError(f"search must be 'ternary' or 'exhaustive', got {search!r}")
    out = Path(out_dir)
    seed = recipe.seed if data_seed is None else int(data_seed)
    data = load_dataset(data_spec, seed=seed)
    data_kwargs = dict(
        num_classes=data.num_classes,
        in_chans=data.in_chans,
        img_size=data.img_size,
        drop_rate=recipe.drop_rate,
        drop_path_rate=recipe.drop_path_rate,
    )
    teacher_model, info = load_teacher(teacher_dir)
    if info["data"].get("num_classes") != data.num_classes:
        raise ValueError(
            f"the teacher {info['model']} ({teacher_dir}) predicts "
            f"{info['data'].get('num_classes')} classes but dataset {data_spec!r} has "
            f"{data.num_classes}; train a teacher on the same classes"
        )
    teacher_scale = sum(p.numel() for p in teacher_model.parameters())
    del teacher_model
    student_kwargs = {**data_kwargs, **(student_args or {})}
    student_scale = _params(student_name, student_kwargs)
    if student_scale >= teacher_scale:
        raise ValueError(
            f"the student {student_name} ({student_scale:,} parameters) is not smaller than "
            f"the teacher {info['model']} ({teacher_scale:,}); AMD needs a smaller student"
        )
    base_name = assistant or info["model"]
    base_args = assistant_args
    if base_args is None:
        base_args = dict(info["kwargs"]) if base_name == info["model"] else {}
    base_kwargs = {**base_args, **data_kwargs}
    if candidates is None:
        if grid < 1:
            raise ValueError(f"grid must be >= 1, got {grid}")
        multipliers = _grid_multipliers(base_name, base_kwargs, student_scale, teacher_scale, grid)
    else:
        multipliers = [float(m) for m in candidates]
        if not multipliers:
            raise ValueError("candidates is empty; give width multipliers or None to grid")
    pool: dict[str, dict[str, Any]] = {}
    outside = []
    for mult in multipliers:
        kwargs = scale_widths(base_name, mult, base_kwargs)
        params = _params(base_name, kwargs)
        if not student_scale < params < teacher_scale:
            outside.append(f"x{mult:g} ({params:,})")
            continue
        key = json.dumps(kwargs, sort_keys=True, default=str)
        pool.setdefault(key, {"multiplier": mult, "kwargs": kwargs, "params": params})
    if outside:
        raise ValueError(
            f"assistant candidate(s) {', '.join(outside)} of {base_name} are not strictly "
            f"between the student {student_name} ({student_scale:,} parameters) and the "
            f"teacher {info['model']} ({teacher_scale:,}); choose width multipliers between them"
        )
    cands = sorted(pool.values(), key=lambda c: c["params"])
    task_args = dict(temperature=temperature, alpha=alpha, feature_weight=feature_weight)
    probe_recipe = recipe.replace(epochs=search_epochs)

    record: dict[str, Any] = {
        "method": "AMD (Han et al., ECCV 2024)",
        "criterion": "NPSD_i = (P_i - P_s) / (S_i - S_s); P: validation top-1 of a probe run, "
        "S: parameters in millions; the assistant maximizes it",
        "teacher": {"run": str(teacher_dir), "model": info["model"], "params": teacher_scale},
        "student": {"model": student_name, "kwargs": student_kwargs, "params": student_scale},
        "assistant_model": base_name,
        "candidates": cands,
        "search": search,
        "search_epochs": search_epochs,
        "task_args": task_args,
        "steps": [],
    }
    current, current_scale = str(teacher_dir), teacher_scale
    for k in range(1, max_assistants + 1):
        remaining = [c for c in cands if c["params"] < current_scale]
        if not remaining:
            break
        probe_dir = out / "search" / f"step{k}"
        student_probe = _train(
            student_name,
            student_kwargs,
            current,
            data,
            data_spec,
            seed,
            probe_recipe,
            task_args,
            probe_dir / "student",
            progress,
        )
        probes: dict[int, dict[str, Any]] = {}

        def probe(
            i: int, remaining=remaining, probe_dir=probe_dir, probes=probes, current=current
        ) -> float:
            c = remaining[i]
            run = probe_dir / f"x{c['multiplier']:g}"
            probes[i] = _train(
                base_name,
                c["kwargs"],
                current,
                data,
                data_spec,
                seed,
                probe_recipe,
                task_args,
                run,
                progress,
            )
            return probes[i]["val_top1"]

        best, values = search_assistant(
            [c["params"] / 1e6 for c in remaining],
            probe,
            student_probe["val_top1"],
            student_scale / 1e6,
            search,
        )
        chosen = remaining[best]
        trained = _train(
            base_name,
            chosen["kwargs"],
            current,
            data,
            data_spec,
            seed,
            recipe,
            task_args,
            out / f"step{k}_assistant",
            progress,
        )
        record["steps"].append(
            {
                "step": k,
                "teacher": current,
                "student_probe": {**student_probe, "params": student_scale},
                "probes": [
                    {
                        **probes[i],
                        "multiplier": remaining[i]["multiplier"],
                        "params": remaining[i]["params"],
                        "npsd": values[i],
                    }
                    for i in sorted(values)
                ],
                "not_probed": [
                    remaining[i]["multiplier"] for i in range(len(remaining)) if i not in values
                ],
                "chosen": {
                    "multiplier": chosen["multiplier"],
                    "params": chosen["params"],
                    "npsd": values[best],
                },
                "assistant": trained,
            }
        )
        current, current_scale = trained["run"], chosen["params"]
    final = _train(
        student_name,
        student_kwargs,
        current,
        data,
        data_spec,
        seed,
        recipe,
        task_args,
        out / f"step{len(record['steps']) + 1}_student",
        progress,
    )
    record["final"] = {**final, "teacher": current}
    record["chain"] = [str(teacher_dir)] + [s["assistant"]["run"] for s in record["steps"]]
    record["chain"].append(final["run"])
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / AMD_JSON, json.dumps(record, indent=2, default=str) + "\n")
    return record
