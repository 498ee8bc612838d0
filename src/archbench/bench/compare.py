"""Fair comparison: train and measure a set of models under one data, recipe, budget and seed set.

A comparison is described by a :class:`CompareSpec` (CLI flags or a YAML file). Before
anything trains, every model name, the data, the recipe and the budget are validated and
every matched-budget model is scaled; an output folder that holds a different spec is
refused. Each (model, seed) becomes a run whose full configuration is hashed into a key:
re-running the spec skips completed runs and resumes interrupted ones from their last
checkpoint. Runs train in parallel (``jobs``) with the cores split between them; test
accuracy is evaluated once, on the checkpoint chosen on the validation split; speed and
memory are measured afterwards one run at a time, so that parallel training does not
disturb the timings. A failed run (a NaN loss, an exception) is recorded with its error
and the others go on. Runs train on an executor (:mod:`archbench.bench.executors`): local
processes, or a Ray cluster with ``executor: ray``; planning and reporting are the same
for both, and so are the results.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
import time
import traceback
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import yaml

from ..models import create_model, get_model_card
from .budget import (
    count_for_budget,
    measure_budget_quantity,
    parse_budget,
    scale_to_budget,
    steps_for_compute,
)
from .executors import EXECUTORS, Executor, make_executor
from .leaderboard import (
    ACCURACY_KEYS,
    aggregate,
    distill_gains,
    distill_gains_markdown,
    leaderboard_markdown,
    leaderboard_text,
)
from .measure import (
    count_flops,
    count_params,
    environment,
    measure_latency,
    measure_peak_memory,
    measure_throughput,
)
from .stats import INTERVAL_METHODS, pack_correct

__all__ = [
    "CompareSpec",
    "execute_runs",
    "load_run_data",
    "plan_runs",
    "record_runs",
    "report_comparison",
    "run_compare",
]

RESULTS = "results.jsonl"
SPEC_FILE = "spec.yaml"
RECIPE_FILE = "recipe.yaml"


@dataclass
class CompareSpec:
    """Everything that defines a comparison. ``jobs``, ``executor``, ``ray_address`` and
    ``out`` do not change results."""

    models: list[str]
    data: str = "shapes"
    recipe: str = "cpu-fast"
    budget: str | dict = "epochs"
    seeds: int | list[int] = 1
    epochs: int | None = None
    model_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    task: str | None = None  # None: the recipe's task
    task_args: dict[str, Any] = field(default_factory=dict)
    # {teacher: RUN|MODEL, methods: [NAME | {name, args}], baseline: true}: every model is
    # a student trained with each method and (baseline) without distillation
    distill: dict[str, Any] | None = None
    # {methods: [NAME | {name, args}], baselines: [random, supervised], probe: {...}}: every
    # model pretrained by each self-supervised method, all scored by one probe
    # (see archbench.bench.pretrain_axis)
    pretrain: dict[str, Any] | None = None
    # {MODEL: FILE | hf-hub:ORG/NAME}: each listed model runs twice, from scratch and
    # fine-tuned from these weights (entry "MODEL + pretrained"); see models.pretrained
    pretrained: dict[str, str] = field(default_factory=dict)
    # {methods: [NAME | {name, args}], finetune_epochs: 0, ...}: every trained run also
    # compressed by each method (entry "MODEL + METHOD"); see archbench.bench.compress_axis
    compress: dict[str, Any] | None = None
    # {params: [lr, weight_decay] | {KEY: [LOW, HIGH]}, trials: N, seed: 0}: every model gets
    # the same Optuna search on validation, its seeds train with its best settings
    # (see archbench.bench.tune)
    tune: dict[str, Any] | None = None
    measure_batch: int = 64
    data_seed: int = 0
    explain: bool = True
    # the gap intervals: "t" (Student / Welch t) or a bootstrap, "percentile" or "bca"
    interval: str = "t"
    jobs: int = 1
    # where runs train: "local" (this machine's processes) or "ray" (a Ray cluster at
    # ray_address; None starts a Ray instance here); see archbench.bench.executors
    executor: str = "local"
    ray_address: str | None = None
    out: str = "runs/compare"

    _TYPES = {
        "models": list,
        "data": str,
        "recipe": str,
        "budget": (str, dict),
        "seeds": (int, list),
        "epochs": (int, type(None)),
        "model_kwargs": dict,
        "task": (str, type(None)),
        "task_args": dict,
        "distill": (dict, type(None)),
        "pretrain": (dict, type(None)),
        "pretrained": dict,
        "compress": (dict, type(None)),
        "tune": (dict, type(None)),
        "measure_batch": int,
        "data_seed": int,
        "explain": bool,
        "interval": str,
        "jobs": int,
        "executor": str,
        "ray_address": (str, type(None)),
        "out": str,
    }

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            expected = self._TYPES[f.name]
            allowed = expected if isinstance(expected, tuple) else (expected,)
            if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
                raise TypeError(
                    f"spec key {f.name!r} must be {_type_name(expected)}, got {type(value).__name__} {value!r}"
                )
        if not self.models:
            raise ValueError("a comparison needs at least one model")
        if any(not isinstance(m, str) for m in self.models):
            raise TypeError("spec key 'models' must be a list of model names (strings)")
        if len(set(self.models)) != len(self.models):
            raise ValueError(
                f"models are listed twice: {sorted({m for m in self.models if self.models.count(m) > 1})}"
            )
        if isinstance(self.seeds, int):
            if self.seeds < 1:
                raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        elif not self.seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in self.seeds
        ):
            raise ValueError("seeds must be a count or a non-empty list of integers")
        if self.jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {self.jobs}")
        if self.executor not in EXECUTORS:
            raise ValueError(
                f"executor must be one of {', '.join(EXECUTORS)}, got {self.executor!r}"
            )
        if self.ray_address is not None and self.executor != "ray":
            raise ValueError(
                f"ray_address {self.ray_address!r} is given but the executor is "
                f"{self.executor!r}; add --executor ray, or leave the address out"
            )
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.measure_batch < 1:
            raise ValueError(f"measure_batch must be >= 1, got {self.measure_batch}")
        if self.interval not in INTERVAL_METHODS:
            raise ValueError(
                f"interval must be one of {', '.join(INTERVAL_METHODS)}, got {self.interval!r}"
            )
        unknown_kw = set(self.model_kwargs) - set(self.models)
        if unknown_kw:
            raise ValueError(
                f"model_kwargs names models not in the comparison: {sorted(unknown_kw)}"
            )
        unknown_pt = set(self.pretrained) - set(self.models)
        if unknown_pt:
            raise ValueError(
                f"pretrained names models not in the comparison: {sorted(unknown_pt)}; "
                "give each listed model's weights as MODEL: FILE|hf-hub:ORG/NAME"
            )
        if not all(isinstance(v, str) and v for v in self.pretrained.values()):
            raise TypeError(
                "spec key 'pretrained' must map model names to a .safetensors path or "
                "'hf-hub:ORG/NAME'"
            )
        if self.pretrained and self.pretrain is not None:
            raise ValueError(
                "a comparison has either a pretrain (self-supervised) axis or pretrained "
                "weights, not both"
            )
        if self.tune is not None and (
            self.pretrain is not None or self.distill or self.compress is not None
        ):
            raise ValueError(
                "tune searches the settings of plainly trained models; it cannot be combined "
                "with a pretrain, distill or compress axis in one comparison"
            )
        if self.compress is not None and (self.pretrain is not None or self.distill):
            raise ValueError(
                "a compress axis compresses plainly trained models; it cannot be combined "
                "with a pretrain or distill axis in one comparison"
            )

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompareSpec:
        if not isinstance(data, dict):
            raise TypeError(
                f"a compare spec must be a mapping of keys to values, got {type(data).__name__}"
            )
        accepted = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(accepted))
        if unknown:
            raise ValueError(
                f"unknown spec key(s) {', '.join(map(repr, unknown))}; accepted keys: {', '.join(accepted)}"
            )
        if "models" not in data:
            raise ValueError("the spec needs a 'models' list")
        return cls(**data)

    @classmethod
    def from_file(cls, path: str | Path) -> CompareSpec:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"spec file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ValueError(f"spec file {path} is not valid YAML: {err}") from None
        return cls.from_dict(data or {})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("_TYPES", None)
        return d

    def identity(self) -> dict[str, Any]:
        """The fields that decide the results (not where they go or how many run at once)."""
        d = self.to_dict()
        d.pop("jobs")
        d.pop("out")
        d.pop("executor")  # where the runs train, not what they are
        d.pop("ray_address")
        d.pop("interval")  # how the results are judged, not what they are
        d["seeds"] = self.seed_list
        if d["task"] is None and not d["task_args"]:  # the default: same identity as before
            del d["task"], d["task_args"]
        if d["pretrain"] is None:
            del d["pretrain"]
        if not d["pretrained"]:
            del d["pretrained"]
        if d["distill"] is None:
            del d["distill"]
        if d["compress"] is None:
            del d["compress"]
        if d["tune"] is None:
            del d["tune"]
        return d


def _type_name(t: Any) -> str:
    if isinstance(t, tuple):
        return " or ".join(x.__name__ if x is not type(None) else "null" for x in t)
    return t.__name__


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ----- planning ----------------------------------------------------------------------


def plan_runs(spec: CompareSpec) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Validate the spec and return one configuration per run, plus shared context.

    Everything that can fail before training fails here: unknown models (all of them
    named at once), a bad recipe or data spec, a budget no model can be scaled to. A
    model that alone cannot reach a matched budget becomes a run that fails at once with
    the reason (status ``budget_unreachable``). The recipe is resolved against the data
    (batch, flips, warm-up; see ``archbench.train.recipe``). Every model of a params,
    flops or compute budget is then built again from the arguments its runs will record
    and counted at the data's own image shape; the comparison is refused when a count is
    off its target by more than the tolerance.
    """
    from ..train import create_task, load_recipe

    unknown = []
    for name in spec.models:
        try:
            get_model_card(name)
        except ValueError as err:
            unknown.append(str(err))
    if unknown:
        raise ValueError("; ".join(unknown))

    recipe = load_recipe(spec.recipe)
    budget = parse_budget(spec.budget)
    if budget.kind == "epochs" and budget.value is not None:
        recipe = recipe.replace(epochs=int(budget.value))
    if spec.epochs is not None:
        recipe = recipe.replace(epochs=spec.epochs)
    if spec.task is not None:
        recipe = recipe.replace(task=spec.task, task_args=spec.task_args)
    elif spec.task_args:
        recipe = recipe.replace(task_args={**recipe.task_args, **spec.task_args})
    data = load_run_data(spec.data, spec.data_seed)
    img_size = _img_size(data)
    shape = dict(img_size=img_size, in_chans=data.in_chans, num_classes=data.num_classes)
    if budget.kind == "steps":
        recipe = recipe.replace(total_steps=int(budget.value))
    recipe = recipe.for_data(data)  # the rules for small data, resolved once for every run
    tune = None
    if spec.tune is not None:  # an unknown key or a bad range fails before any work
        from .tune import tune_settings

        tune = tune_settings(spec.tune, recipe)

    scaled: dict[str, dict[str, Any]] = {}
    unreachable: dict[str, str] = {}
    steps_of: dict[str, int] = {}
    target = None
    if budget.kind == "compute":
        target, steps_of, unreachable = _compute_budget(spec, budget, recipe, data)
    if budget.kind in ("params", "flops"):
        if budget.value is not None:
            target = budget.value
        else:
            target = measure_budget_quantity(budget.reference, budget.kind, **shape)
            _check_reference(budget, target, data, recipe, spec)
        for name in spec.models:
            try:
                scaled[name] = scale_to_budget(
                    name,
                    budget.kind,
                    target,
                    tolerance=budget.tolerance,
                    base_kwargs=spec.model_kwargs.get(name),
                    **shape,
                ).to_dict()
            except ValueError as err:
                unreachable[name] = str(err)
    if unreachable and len(unreachable) == len(spec.models):
        raise ValueError("matched budget cannot be met:\n  " + "\n  ".join(unreachable.values()))

    recipe_dict = recipe.to_dict()
    runs = []
    entries = _distill_entries(spec, recipe, shape, runs) if spec.distill else [(None, recipe)]
    if spec.pretrain is not None:
        from .pretrain_axis import pretrain_entries, probe_settings

        if spec.distill:
            raise ValueError("a comparison has either a distill or a pretrain axis, not both")
        entries = pretrain_entries(spec.pretrain, recipe)
    for name in spec.models:
        kwargs = dict(spec.model_kwargs.get(name, {}))
        if name in scaled:
            kwargs.update(scaled[name]["kwargs"])
        kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}
        # Fail now on a keyword the model does not take, not after hours of other runs.
        with torch.device("meta"):
            meta_model = create_model(name, **shape, **kwargs)
        for method, entry_recipe in entries:
            if method is not None and entry_recipe.task != "classification":
                task = create_task(entry_recipe.task, entry_recipe.task_args)
                check = getattr(task, "check_student", None)
                try:
                    if check is not None:
                        check(meta_model)
                except ValueError as err:
                    raise ValueError(f"student {name} with {method}: {err}") from None
        if name in spec.pretrained:  # a missing or pickled file fails before any training
            from ..models.pretrained import resolve_pretrained

            resolve_pretrained(spec.pretrained[name])
        inits = [None, spec.pretrained[name]] if name in spec.pretrained else [None]
        for (method, entry_recipe), init in itertools.product(entries, inits):
            if name in steps_of:  # a compute budget: this model's own number of steps
                entry_recipe = entry_recipe.replace(total_steps=steps_of[name]).for_data(data)
            check = None
            if name not in unreachable and budget.kind in ("params", "flops", "compute"):
                check = _check_budget(name, kwargs, entry_recipe, budget, target, data)
            for seed in spec.seed_list:
                cfg = {
                    "model": name,
                    "model_kwargs": kwargs,
                    "data": spec.data,
                    "data_seed": spec.data_seed,
                    "recipe": entry_recipe.to_dict(),
                    "seed": seed,
                    "budget": budget.to_dict(),
                    "budget_target": target,
                    "max_seconds": budget.value if budget.kind == "time" else None,
                    "measure_batch": spec.measure_batch,
                    "img_size": img_size,
                }
                if method is not None:  # a distillation entry: the student with one method
                    cfg["method"] = method
                    cfg["entry"] = f"{name} + {method}"
                if init is not None:  # fine-tuned from pretrained weights
                    cfg["pretrained"] = init
                    cfg["entry"] = f"{cfg.get('entry', name)} + pretrained"
                if spec.pretrain is not None:
                    cfg["probe"] = probe_settings(spec.pretrain)
                if check is not None:
                    cfg["budget_check"] = check
                if name in unreachable:
                    cfg["budget_error"] = unreachable[name]
                cfg["key"] = _hash(cfg)
                runs.append(cfg)
    if spec.compress is not None:
        from .compress_axis import compress_entries

        settings = compress_entries(spec.compress)  # unknown methods or arguments fail here
        for base in list(runs):
            for c in settings:
                cfg = {k: v for k, v in base.items() if k not in ("key", "budget_check")}
                cfg.update(compress=c, entry=f"{base['model']} + {c['label']}")
                cfg["base_key"] = base["key"]
                cfg["key"] = _hash(cfg)
                runs.append(cfg)
    context = {
        "data": data.describe(),
        "recipe": recipe_dict,
        "budget": budget.to_dict(),
        "budget_target": target,
        "scaled": scaled,
    }
    if tune is not None:
        context["tune"] = tune
    return runs, context


def _build_kwargs(
    model_kwargs: dict[str, Any], img_size: int, data: Any, recipe: Any
) -> dict[str, Any]:
    """The arguments a run builds its model with and records in ``model.json``."""
    return dict(
        num_classes=data.num_classes,
        in_chans=data.in_chans,
        img_size=img_size,
        drop_rate=recipe.drop_rate,
        drop_path_rate=recipe.drop_path_rate,
        **model_kwargs,
    )


def _compute_budget(
    spec: CompareSpec, budget: Any, recipe: Any, data: Any
) -> tuple[float, dict[str, int], dict[str, str]]:
    """Target MACs x images, each model's steps, and the models that cannot meet it.

    A ``match:MODEL`` target is that model (with its ``model_kwargs``) trained for the
    recipe's length. Each model's count is its forward MACs at the data's image shape.
    """
    shape = tuple(data.train.images.shape[1:])
    batch = recipe.batch_size

    def macs(name: str) -> float:
        kwargs = _build_kwargs(spec.model_kwargs.get(name, {}), _img_size(data), data, recipe)
        return count_for_budget(name, kwargs, "flops", shape)

    if budget.value is not None:
        target = float(budget.value)
    else:
        target = macs(budget.reference) * recipe.resolved["total_steps"] * batch
    steps_of, unreachable = {}, {}
    for name in spec.models:
        m = macs(name)
        steps = steps_for_compute(m, batch, target)
        achieved = m * steps * batch
        if abs(achieved / target - 1) > budget.tolerance:
            unreachable[name] = (
                f"{name} cannot be trained to {target:.4g} MACs x images within "
                f"{budget.tolerance:.0%}: one step of {batch} images costs {m * batch:.4g}, "
                f"so {steps} step(s) give {achieved:.4g} ({100 * (achieved / target - 1):+.1f}%). "
                "Raise the compute target or the tolerance, or leave it out of this comparison"
            )
        else:
            steps_of[name] = steps
    return target, steps_of, unreachable


def _check_reference(budget: Any, target: float, data: Any, recipe: Any, spec: CompareSpec) -> None:
    """Count the reference model of a ``match:`` budget again, independently of the scaler."""
    shape = tuple(int(v) for v in data.train.images.shape[1:])
    ref = budget.reference
    kwargs = _build_kwargs(spec.model_kwargs.get(ref, {}), _img_size(data), data, recipe)
    counted = count_for_budget(ref, kwargs, budget.kind, shape)
    if abs(counted / target - 1) > 1e-6:
        raise ValueError(
            f"budget check failed: the reference {ref} counted again at the data's "
            f"{shape[1]}x{shape[2]}x{shape[0]} images has {counted:,.0f}, not the target "
            f"{target:,.0f} the scaler measured; refusing to train"
        )


def _check_budget(
    name: str,
    model_kwargs: dict[str, Any],
    recipe: Any,
    budget: Any,
    target: float,
    data: Any,
) -> dict[str, Any]:
    """Count ``name`` again, built from the arguments its runs record, at the data's own
    image shape, and refuse the comparison when the count is off ``target``."""
    shape = tuple(int(v) for v in data.train.images.shape[1:])
    kwargs = _build_kwargs(model_kwargs, _img_size(data), data, recipe)
    if budget.kind == "compute":
        per_image = count_for_budget(name, kwargs, "flops", shape)
        images = recipe.resolved["total_steps"] * recipe.batch_size
        counted, what = per_image * images, "MACs x images seen"
    else:
        counted = count_for_budget(name, kwargs, budget.kind, shape)
        what = "parameters" if budget.kind == "params" else "MACs per image"
    rel = counted / target - 1
    if abs(rel) > budget.tolerance:
        raise ValueError(
            f"budget check failed: {name} rebuilt from its recorded arguments {model_kwargs} "
            f"has {counted:,.0f} {what} at the data's {shape[1]}x{shape[2]}x{shape[0]} images, "
            f"{100 * rel:+.1f}% off the target {target:,.0f} (tolerance "
            f"{budget.tolerance:.0%}); refusing to train a comparison whose budget is not met"
        )
    return {"kind": budget.kind, "counted": counted, "target": target, "rel_error": rel}


DISTILL_KEYS = ("teacher", "methods", "baseline")


def _distill_entries(
    spec: CompareSpec, recipe: Any, shape: dict[str, Any], runs: list[dict[str, Any]]
) -> list[tuple[str, Any]]:
    """The distillation axis: (method label, recipe) for the baseline and each method.

    A teacher given by model name is trained first, once (seed 0, the comparison's
    recipe with plain classification), as a run of its own that ``runs`` receives.
    """
    from ..train.tasks import task_arguments

    d = dict(spec.distill or {})
    unknown = sorted(set(d) - set(DISTILL_KEYS))
    if unknown:
        raise ValueError(f"unknown distill key(s) {unknown}; accepted: {', '.join(DISTILL_KEYS)}")
    if not d.get("teacher") or not d.get("methods"):
        raise ValueError("distill needs a teacher (run folder or model name) and a methods list")
    teacher = str(d["teacher"])
    if Path(teacher).exists():
        teacher_dir = str(Path(teacher).resolve())
    else:
        get_model_card(teacher)  # neither a folder nor a model: fails with close names
        plain = recipe.replace(task="classification", task_args={})
        cfg = {
            "model": teacher,
            "model_kwargs": {},
            "data": spec.data,
            "data_seed": spec.data_seed,
            "recipe": plain.to_dict(),
            "seed": 0,
            "budget": {"kind": "epochs"},
            "budget_target": None,
            "max_seconds": None,
            "measure_batch": spec.measure_batch,
            "img_size": shape["img_size"],
            "role": "teacher",
            "entry": f"{teacher} (teacher)",
        }
        cfg["key"] = _hash(cfg)
        runs.append(cfg)
        teacher_dir = str(_run_dir(Path(spec.out).resolve(), cfg))
    entries: list[tuple[str, Any]] = []
    if d.get("baseline", True):
        entries.append(("no KD", recipe.replace(task="classification", task_args={})))
    methods = [
        (m, {}) if isinstance(m, str) else (m.get("name"), dict(m.get("args") or {}))
        for m in d["methods"]
    ]
    names = [name for name, _ in methods]
    seen = set()
    for name, args in methods:
        label = name
        if names.count(name) > 1:  # the same method with other arguments: label by them
            label = f"{name}({', '.join(f'{k}={v}' for k, v in sorted(args.items()))})"
        if label in seen:
            raise ValueError(f"distill method {label!r} is listed twice with the same arguments")
        seen.add(label)
        if "teacher" in task_arguments(name):
            args["teacher"] = teacher_dir
        entries.append((label, recipe.replace(task=name, task_args=args)))
    return entries


def _markdown_table_html(text: str) -> str:
    """A markdown table (and the paragraph under it) as HTML, escaped."""
    import html

    rows, notes = [], []
    for line in text.strip().splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            rows.append([html.escape(c.strip()) for c in line.strip("|").split("|")])
        elif line.strip() and not line.startswith("|"):
            notes.append(html.escape(line.strip()))
    head = "".join(f"<th>{c}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f"<table><tr>{head}</tr>{body}</table><p>{' '.join(notes)}</p>"


def _img_size(data: Any) -> int:
    size = data.img_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


# ----- running -----------------------------------------------------------------------


def _run_dir(out: Path, cfg: dict[str, Any]) -> Path:
    return out / "runs" / f"{cfg['model']}-seed{cfg['seed']}-{cfg['key']}"


def train_run(cfg: dict[str, Any], out: str, threads: int) -> dict[str, Any]:
    """Train one run (in a worker process or in-process) and evaluate its test split once."""
    torch.set_num_threads(threads)
    from ..train import Recipe, evaluate, fit, load_checkpoint
    from ..train.checkpoint import atomic_write_text

    run_dir = _run_dir(Path(out), cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"key": cfg["key"], "model": cfg["model"], "seed": cfg["seed"]}
    try:
        if cfg.get("budget_error"):  # planned as a failed run: the budget is out of reach
            result.update(
                status="budget_unreachable", error=f"budget not reachable: {cfg['budget_error']}"
            )
            (run_dir / "run_result.json").write_text(json.dumps(result, indent=2, default=str))
            return result
        data = load_run_data(cfg["data"], cfg["data_seed"])
        recipe = Recipe.from_dict({**cfg["recipe"], "seed": cfg["seed"]})
        kwargs = _build_kwargs(cfg["model_kwargs"], cfg["img_size"], data, recipe)
        # the same record `archbench train` writes, so eval / explain can rebuild the model
        info = {
            "model": cfg["model"],
            "kwargs": kwargs,
            "data": cfg["data"],
            "data_seed": cfg["data_seed"],
        }
        if cfg.get("pretrained"):
            info["pretrained"] = cfg["pretrained"]
        atomic_write_text(run_dir / "model.json", json.dumps(info, indent=2) + "\n")
        torch.manual_seed(cfg["seed"])
        model = create_model(cfg["model"], pretrained=cfg.get("pretrained"), **kwargs)
        t0 = time.perf_counter()
        if cfg.get("probe"):  # the pretrain axis: train (or not), then probe the encoder
            from .pretrain_axis import run_pretrain_entry

            result.update(run_pretrain_entry(cfg, model, data, recipe, run_dir))
            result.setdefault("wall_time_s", time.perf_counter() - t0)
            (run_dir / "run_result.json").write_text(json.dumps(result, indent=2, default=str))
            return result
        fitted = fit(model, data, recipe, run_dir, resume=True, max_seconds=cfg["max_seconds"])
        result.update(
            status=fitted.status,
            epochs_completed=fitted.epochs_completed,
            history=fitted.history,
            val_top1=fitted.best_val_top1,  # accuracies are stored as fractions in [0, 1]
            best_epoch=fitted.best_epoch,
            train_time_s=fitted.train_time_s,
            train_images_per_s=fitted.images_per_s,
            data_time_share=fitted.data_time_share,
            wall_time_s=time.perf_counter() - t0,
        )
        if fitted.error:
            result["error"] = str(fitted.error)
        if cfg.get("trial") and fitted.status in ("completed", "stopped_time"):
            # a tuning trial is scored on validation alone: the test split is not read
            result["status"] = "completed" if fitted.best_checkpoint else "error"
        elif fitted.status in ("completed", "stopped_time") and fitted.best_checkpoint:
            load_checkpoint(fitted.best_checkpoint, model)  # chosen on validation
            test = evaluate(
                model, data.test if data.test is not None else data.val, per_sample=True
            )
            result.update(
                test_top1=test["top1"],
                test_top5=test["top5"],
                test_loss=test["loss"],
                test_n=test["n"],
                # per-image top-1 (packed bits, base64): the test set's sampling noise
                test_correct=pack_correct(test["correct"].numpy()),
                test_split="test" if data.test is not None else "val (no test split)",
                budget_stop=fitted.status,
                status="completed",
            )
        elif fitted.status in ("completed", "stopped_time"):
            result.update(
                status="error", error="training ended without a checkpoint (budget too small?)"
            )
    except Exception as err:  # a failing run is recorded; the comparison goes on
        result["status"] = "error"
        result["error"] = f"{type(err).__name__}: {err}"
        result["traceback"] = traceback.format_exc(limit=8)
    (run_dir / "run_result.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def measure_run(cfg: dict[str, Any], out: Path) -> dict[str, Any]:
    """Parameters, MACs, latency, throughput and peak memory of a run's model, one at a time."""
    data = load_run_data(cfg["data"], cfg["data_seed"])
    torch.manual_seed(0)
    model = create_model(
        cfg["model"],
        num_classes=data.num_classes,
        in_chans=data.in_chans,
        img_size=cfg["img_size"],
        **cfg["model_kwargs"],
    ).eval()
    size = cfg["img_size"]
    batch = cfg["measure_batch"]
    lat = measure_latency(model, size, batch=1, warmup=5, repeats=20)
    thr = measure_throughput(model, size, batch=batch, min_seconds=0.5)
    return {
        "params": count_params(model)["total"],
        "macs": count_flops(model, size)["macs"],
        "latency_ms": lat.median_ms,
        "latency": lat.to_dict(),
        "throughput": thr.images_per_s,
        "throughput_detail": thr.to_dict(),
        "peak_memory_mb": measure_peak_memory(model, size, batch=batch)["peak_bytes"] / 2**20,
    }


def _read_results(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    records = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(_fractions(json.loads(line)))
        except json.JSONDecodeError:
            # a line cut by a kill mid-write: that run is simply redone
            print(f"warning: {path}:{n} is not a complete JSON record; its run will be redone")
    return records


def _fractions(record: dict[str, Any]) -> dict[str, Any]:
    """A record with its accuracies as fractions in [0, 1].

    Records written before ``accuracy_unit`` was recorded held percent; they are
    converted once, so a folder of finished runs keeps working.
    """
    if record.get("accuracy_unit") != "fraction":
        for key in ACCURACY_KEYS:
            if isinstance(record.get(key), (int, float)):
                record[key] = record[key] / 100.0
        record["accuracy_unit"] = "fraction"
    return record


def _append(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _check_out_dir(out: Path, spec: CompareSpec) -> None:
    spec_path = out / SPEC_FILE
    if spec_path.exists():
        old = yaml.safe_load(spec_path.read_text()) or {}
        old_id = old.get("identity")
        if old_id != json.loads(json.dumps(spec.identity(), default=str)):
            diffs = sorted(
                k
                for k in set(old_id or {}) | set(spec.identity())
                if (old_id or {}).get(k)
                != json.loads(json.dumps(spec.identity(), default=str)).get(k)
            )
            raise ValueError(
                f"output folder {out} holds results of a different comparison (differs in: {', '.join(diffs)}); "
                "choose another --out, or delete the folder to start over"
            )
    elif (out / RESULTS).exists():
        raise ValueError(
            f"output folder {out} holds a {RESULTS} without its {SPEC_FILE}; choose another --out"
        )


def _write_spec(out: Path, spec: CompareSpec, context: dict[str, Any]) -> None:
    payload = {
        "spec": spec.to_dict(),
        "identity": json.loads(json.dumps(spec.identity(), default=str)),
        "context": context,
    }
    tmp = out / (SPEC_FILE + ".tmp")
    tmp.write_text(yaml.safe_dump(json.loads(json.dumps(payload, default=str)), sort_keys=False))
    tmp.replace(out / SPEC_FILE)


def run_compare(
    spec: CompareSpec,
    log: Any = print,
    remeasure: bool = False,
    executor: Executor | None = None,
) -> dict[str, Any]:
    """Plan, train, evaluate, measure and report a comparison; return paths and the leaderboard.

    The three parts have their own homes: planning (:func:`plan_runs` and the output
    folder's checks), execution (an :class:`~archbench.bench.executors.Executor`: the
    spec's ``executor``, local processes or Ray, unless one is given) and reporting
    (:func:`record_runs` appends ``results.jsonl``; :func:`report_comparison` writes the
    leaderboard and the report). ``remeasure`` measures speed and memory of already
    completed runs again (for example on a machine that was busy the first time);
    accuracy and training are untouched.
    """
    t_start = time.perf_counter()
    out = Path(spec.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    _check_out_dir(out, spec)
    try:
        runs, context = plan_runs(spec)
        if executor is None:
            executor = make_executor(spec.executor, spec.jobs, spec.ray_address)
        executor.start()  # Ray missing or a cluster that does not answer: fail before work
        try:
            out.mkdir(parents=True, exist_ok=True)
            _write_spec(out, spec, context)
            _write_recipe(out, context["recipe"])
            results_path = out / RESULTS
            tuning = None
            if "tune" in context:
                runs, tuning = _tune(runs, context["tune"], out, executor, spec.jobs, log)
            todo = _pending_runs(runs, results_path)
            log(
                f"{len(runs)} runs ({len({c.get('entry') or c['model'] for c in runs})} models "
                f"or entries, {len(spec.seed_list)} seed(s)); "
                f"{len(runs) - len(todo)} already complete, {len(todo)} to run with "
                f"{spec.jobs} job(s)"
                + ("" if executor.name == "local" else f" on the {executor.name} executor")
            )
            phases: dict[str, float] = {"setup_s": time.perf_counter() - t_start}
            t_phase = time.perf_counter()
            trained = execute_runs(todo, out, executor, spec.jobs, log)
        finally:
            executor.close()
        phases["training_s"] = time.perf_counter() - t_phase
        t_phase = time.perf_counter()
        compressing = [c for c in todo if "compress" in c]
        cores = available_threads()
        for i, cfg in enumerate(compressing, 1):  # one at a time: their timings need the cores
            log(f"[{i}/{len(compressing)}] compressing {cfg['entry']} seed {cfg['seed']}")
            trained[cfg["key"]] = compress_run_entry(cfg, out, cores)
            _log_result(log, trained[cfg["key"]])
        if compressing:
            phases["compression_s"] = time.perf_counter() - t_phase
            t_phase = time.perf_counter()
        env = environment()
        record_runs(todo, trained, out, env, cores)
        records = [
            r for r in _read_results(results_path) if r.get("key") in {c["key"] for c in runs}
        ]
        if remeasure:
            _remeasure(runs, todo, records, out, cores, log)
            _rewrite(results_path, records)
        phases["measurement_s"] = time.perf_counter() - t_phase
        t_phase = time.perf_counter()
        reported = report_comparison(spec, runs, records, context, env, out, phases, tuning)
    finally:
        load_run_data.cache_clear()  # the comparison's data is not kept after it
    elapsed = time.perf_counter() - t_start
    phases["report_s"] = time.perf_counter() - t_phase - phases.get("explain_s", 0.0)
    return {"phases": phases, **reported, "out": out, "elapsed_s": elapsed}


# ----- execution ---------------------------------------------------------------------


def _tune(
    runs: list[dict[str, Any]],
    settings: dict[str, Any],
    out: Path,
    executor: Executor,
    jobs: int,
    log: Any,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every model's search (:mod:`archbench.bench.tune`), on the comparison's executor with
    the threads of one round (one trial per model); written to ``tuning.json``."""
    from ..train.checkpoint import atomic_write_text
    from .tune import tune_models

    cores = available_threads()
    models = len({c["model"] for c in runs})
    threads = max(1, cores // max(1, min(jobs, models, cores)))
    log(f"tuning {models} model(s): {settings['trials']} trial(s) each, the same search")
    runs, tuning = tune_models(runs, settings, out, executor, threads, log)
    atomic_write_text(out / "tuning.json", json.dumps(tuning, indent=2, default=str) + "\n")
    return runs, tuning


def _pending_runs(runs: list[dict[str, Any]], results_path: Path) -> list[dict[str, Any]]:
    """The runs without a record. A record of a run whose worker died (``interrupted``) is
    dropped from the file, so that the run is done again and keeps one record."""
    records = _read_results(results_path)
    if any(r.get("interrupted") for r in records):
        _rewrite(results_path, [r for r in records if not r.get("interrupted")])
    done = {r["key"] for r in records if r.get("key") and not r.get("interrupted")}
    return [cfg for cfg in runs if cfg["key"] not in done]


def execute_runs(
    todo: list[dict[str, Any]], out: Path, executor: Executor, jobs: int, log: Any = print
) -> dict[str, dict[str, Any]]:
    """Train every run of ``todo`` that trains (teachers first: students need them) on
    ``executor``; the result of each by key. Threads: the cores (``OMP_NUM_THREADS`` when
    set) split between the runs that train at once, the same rule for every executor."""
    cores = available_threads()
    jobs = max(1, min(jobs, len(todo) or 1, cores))
    threads = max(1, cores // jobs)
    trained: dict[str, dict[str, Any]] = {}
    teachers = [c for c in todo if c.get("role") == "teacher"]
    students = [c for c in todo if c.get("role") != "teacher" and "compress" not in c]
    if executor.name != "local" and (teachers or students):
        log(
            f"  sending {len(teachers) + len(students)} run(s) to {executor.name}, "
            f"each asking for {threads} CPU(s)"
        )

    def teacher_started(i: int, n: int, cfg: dict[str, Any]) -> None:
        log(f"training the teacher {cfg['model']}")

    def student_started(i: int, n: int, cfg: dict[str, Any]) -> None:
        log(f"[{i}/{n}] training {cfg['model']} seed {cfg['seed']}")

    for cfgs, n_threads, started in (
        (teachers, cores, teacher_started),
        (students, threads, student_started),
    ):
        for cfg, result in executor.map(train_run, cfgs, str(out), n_threads, started):
            trained[cfg["key"]] = result
            _log_result(log, result)
    return trained


# ----- reporting ---------------------------------------------------------------------


def record_runs(
    todo: list[dict[str, Any]],
    trained: dict[str, dict[str, Any]],
    out: Path,
    env: dict[str, Any],
    cores: int,
) -> None:
    """Append one record per finished run to ``results.jsonl``, its speed and memory
    measured here, one architecture at a time (not beside a training job)."""
    measured: dict[str, dict[str, Any]] = {}  # one measurement per architecture, not per seed
    for cfg in todo:
        res = trained[cfg["key"]]
        record = {
            "key": cfg["key"],
            "model": cfg["model"],
            "kind": get_model_card(cfg["model"]).kind,
            "seed": cfg["seed"],
            "config": cfg,
            "model_kwargs": cfg["model_kwargs"],
            **{k: cfg[k] for k in ("entry", "method", "role", "pretrained", "tuned") if k in cfg},
            "task": cfg["recipe"]["task"],
            "task_args": cfg["recipe"]["task_args"],
            "run_dir": str(_run_dir(out, cfg)),
            "accuracy_unit": "fraction",
            **{k: v for k, v in res.items() if k not in ("key", "model", "seed")},
        }
        if res.get("status") == "completed" and "compress" not in cfg:
            arch = _hash([cfg[k] for k in ("model", "model_kwargs", "img_size", "data")])
            if arch not in measured:
                measured[arch] = _measured(cfg, out, cores)
            record.update(measured[arch])
        record["environment"] = env
        record["reproduce"] = _reproduce_command(cfg, out)
        _append(out / RESULTS, record)


def _remeasure(
    runs: list[dict[str, Any]],
    todo: list[dict[str, Any]],
    records: list[dict[str, Any]],
    out: Path,
    cores: int,
    log: Any,
) -> None:
    by_key = {c["key"]: c for c in runs}
    todo_keys = {c["key"] for c in todo}
    for r in records:
        if "compress" in by_key[r["key"]]:  # measured before and after by its compress step
            continue
        if r.get("status") == "completed" and r["key"] not in todo_keys:
            log(f"  measuring {r['model']} seed {r['seed']} again")
            r.update(_measured(by_key[r["key"]], out, cores))


def report_comparison(
    spec: CompareSpec,
    runs: list[dict[str, Any]],
    records: list[dict[str, Any]],
    context: dict[str, Any],
    env: dict[str, Any],
    out: Path,
    phases: dict[str, float],
    tuning: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``leaderboard.md`` and ``report.html`` from the records; the rows and tables."""
    rows = aggregate(records, method=spec.interval)
    conditions = (
        f"Data `{spec.data}`, recipe `{spec.recipe}`, budget `{json.dumps(context['budget'])}`, seeds {spec.seed_list}. "
        f"Measured on {env['cpu']} ({env['cpu_count']} cores), torch {env['torch']}; latency at batch 1 and "
        f"throughput / peak memory at batch {spec.measure_batch}, eval mode, one run at a time after training."
    )
    board = "# Leaderboard\n\n" + leaderboard_markdown(rows, conditions)
    gains = distill_gains(records, method=spec.interval) if spec.distill else []
    extra = []
    if gains:
        gains_md = distill_gains_markdown(gains)
        board += "\n## Gain over no distillation\n\n" + gains_md
        extra.append(("Gain over no distillation", _markdown_table_html(gains_md)))
    compression = []
    if spec.compress is not None:
        from .compress_axis import compress_gains, compress_gains_markdown

        compression = compress_gains(records, method=spec.interval)
        comp_md = compress_gains_markdown(compression)
        board += "\n## Compression: accuracy and measured speed-up\n\n" + comp_md + "\n"
        extra.append(("Compression: accuracy and measured speed-up", _markdown_table_html(comp_md)))
    if tuning is not None:
        from .tune import tuning_markdown

        tune_md = tuning_markdown(tuning)
        board += "\n## Hyper-parameter search, the same for every model\n\n" + tune_md + "\n"
        summary, _, trials = tune_md.partition("\n\n| model | trial")
        extra.append(
            (
                "Hyper-parameter search, the same for every model",
                _markdown_table_html(summary) + _markdown_table_html("| model | trial" + trials),
            )
        )
    (out / "leaderboard.md").write_text(board)
    if spec.explain:
        t_explain = time.perf_counter()
        extra += _explain_sections(spec, runs, records, out)
        phases["explain_s"] = time.perf_counter() - t_explain
    from .report import write_report

    report = write_report(out, spec.to_dict(), rows, records, env, extra_sections=extra)
    return {
        "rows": rows,
        "gains": gains,
        "compression": compression,
        "leaderboard": leaderboard_text(rows)
        + ("\n\n" + distill_gains_markdown(gains) if gains else "")
        + ("\n\n" + compress_gains_markdown(compression) if compression else ""),
        "report": report,
    }


@functools.lru_cache(maxsize=1)
def load_run_data(data: str, data_seed: int) -> Any:
    """The comparison's dataset, loaded once per process (planning, every in-process run,
    the measurements, compression and explanations share it; nothing writes into it)."""
    from ..data import load_dataset

    return load_dataset(data, seed=data_seed)


def available_threads() -> int:
    """Threads a comparison may use: ``OMP_NUM_THREADS`` when set (the standard way to
    share a machine between jobs; torch honours it too), otherwise every core."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if value:
        try:
            n = int(value)
        except ValueError:
            raise ValueError(f"OMP_NUM_THREADS must be a positive integer, got {value!r}") from None
        if n < 1:
            raise ValueError(f"OMP_NUM_THREADS must be a positive integer, got {value!r}")
        return n
    return os.cpu_count() or 1


def _measured(cfg: dict[str, Any], out: Path, cores: int) -> dict[str, Any]:
    """The run's speed and memory figures with the conditions they were taken under."""
    torch.set_num_threads(cores)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    figures = measure_run(cfg, out)
    figures["measure_conditions"] = {
        "threads": torch.get_num_threads(),
        "latency_batch": 1,
        "throughput_batch": cfg["measure_batch"],
        "memory_batch": cfg["measure_batch"],
        "mode": "eval, float32, no compile; warm-up excluded",
        "load_avg_1m_before": load,
    }
    return figures


def _rewrite(path: Path, records: list[dict[str, Any]]) -> None:
    """Replace results.jsonl atomically (a kill leaves the old or the new file, never half)."""
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r, default=str) + "\n" for r in records))
    tmp.replace(path)


def compress_run_entry(cfg: dict[str, Any], out: Path, threads: int) -> dict[str, Any]:
    """Compress one trained run (a ``compress`` entry); failures are recorded, not raised."""
    from .compress_axis import run_compress_entry

    torch.set_num_threads(threads)
    run_dir = _run_dir(out, cfg)
    base_dir = _run_dir(out, {**cfg, "key": cfg["base_key"]})
    try:
        result = run_compress_entry(cfg, base_dir, run_dir)
    except Exception as err:  # a method that fails on one model: the comparison goes on
        result = {"key": cfg["key"], "model": cfg["model"], "seed": cfg["seed"]}
        result.update(
            status="error",
            error=f"{type(err).__name__}: {err}",
            traceback=traceback.format_exc(limit=8),
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run_result.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def _reproduce_command(cfg: dict[str, Any], out: Path) -> str:
    """One command that retrains this run alone, with the same data split, recipe and seed
    (for a compression entry: that compresses the trained run again)."""
    if "compress" in cfg:
        c = cfg["compress"]
        parts = [
            f"archbench compress {_run_dir(out, {**cfg, 'key': cfg['base_key']})}",
            f"--method {c['method']}",
        ]
        if c["args"]:
            parts.append(
                "--arg "
                + " ".join(
                    f"'{k}={json.dumps(v, separators=(',', ':'))}'" for k, v in c["args"].items()
                )
            )
        if c["finetune_epochs"]:
            parts.append(f"--finetune-epochs {c['finetune_epochs']} --recipe {out / RECIPE_FILE}")
        parts.append(f"--out {out / 'reproduce' / cfg['key']}")
        return " ".join(parts)
    parts = [
        f"archbench train {cfg['model']}",
        f"--data '{cfg['data']}'",
        f"--data-seed {cfg['data_seed']}",
        f"--recipe {out / RECIPE_FILE}",
        f"--seed {cfg['seed']}",
    ]
    if cfg["max_seconds"]:
        parts.append(f"--max-seconds {cfg['max_seconds']}")
    if cfg["budget"]["kind"] == "compute":  # each model's own length: not in the shared recipe
        parts.append(f"--set total_steps={cfg['recipe']['total_steps']}")
    if cfg.get("tuned"):  # this model's best settings of the search
        parts.append("--set " + " ".join(f"{k}={v!r}" for k, v in cfg["tuned"].items()))
    if cfg["model_kwargs"]:
        args = " ".join(
            f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in cfg["model_kwargs"].items()
        )
        parts.append(f"--model-arg {args}")
    if cfg.get("pretrained"):
        parts.append(f"--pretrained '{cfg['pretrained']}'")
    if "method" in cfg or "role" in cfg:  # a distillation entry: its own task
        parts.append(f"--task {cfg['recipe']['task']}")
        if cfg["recipe"]["task_args"]:
            args = " ".join(
                f"'{k}={json.dumps(v, separators=(',', ':'))}'"
                for k, v in cfg["recipe"]["task_args"].items()
            )
            parts.append(f"--task-arg {args}")
    parts.append(f"--out {out / 'reproduce' / cfg['key']}")
    return " ".join(parts)


def _write_recipe(out: Path, recipe: dict[str, Any]) -> None:
    from ..train import Recipe

    Recipe.from_dict(recipe).to_file(out / RECIPE_FILE)


def _log_result(log: Any, res: dict[str, Any]) -> None:
    if res.get("status") == "completed" and "speedup" in res:  # a compression entry
        log(
            f"  done {res['model']} seed {res['seed']}: test top-1 {100 * res['test_top1']:.2f}%, "
            f"latency x{res['speedup'].get('latency_speedup', float('nan')):.2f}, "
            f"MACs x{res['speedup'].get('macs_speedup', float('nan')):.2f}"
        )
    elif res.get("status") == "completed":
        log(
            f"  done {res['model']} seed {res['seed']}: val top-1 {100 * res['val_top1']:.2f}%, "
            f"test top-1 {100 * res['test_top1']:.2f}%, {res['train_time_s']:.0f} s"
        )
    else:
        log(
            f"  FAILED {res.get('model')} seed {res.get('seed')}: {res.get('status')} {res.get('error', '')}"
        )


def _explain_sections(
    spec: CompareSpec, runs: list[dict], records: list[dict], out: Path
) -> list[tuple[str, str]]:
    """Grad-CAM of every model (its first completed seed) on the same held-out images."""
    import base64

    from ..data.transforms import normalize
    from ..explain import explain, save_panel, to_display
    from ..runs import load_trained

    done = {}
    for r in records:
        name = r.get("entry") or r["model"]
        compressed = "compress" in (r.get("config") or {})  # may hold no float model
        if r.get("status") == "completed" and name not in done and not compressed:
            done[name] = r
    if not done:
        return []
    data = load_run_data(spec.data, spec.data_seed)
    split = data.test if data.test is not None else data.val
    n = min(6, len(split))
    raw = split.images[:n].float() / 255.0
    x = normalize(
        raw, torch.tensor(data.mean).view(1, -1, 1, 1), torch.tensor(data.std).view(1, -1, 1, 1)
    )
    labels = split.labels[:n]
    maps = {}
    for name, record in done.items():  # every model (every entry of a distillation axis)
        model, _ = load_trained(record["run_dir"])
        maps[name] = explain(model, x, targets=labels, method="gradcam")
    names = [f"{data.class_names[int(y)]}" for y in labels]
    path = save_panel(
        out / "plots" / "explanations.png",
        [to_display(r) for r in raw],
        maps,
        row_labels=names,
        title="Grad-CAM for the true class, same held-out images, each model's first seed",
    )
    encoded = base64.b64encode(path.read_bytes()).decode()
    body = (
        f"<img alt='Grad-CAM panel' style='max-width:100%' src='data:image/png;base64,{encoded}'>"
    )
    return [("Explanations (Grad-CAM)", body)]
