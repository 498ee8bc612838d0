"""Equal tuning for every model of a comparison: the same Optuna search, on validation only.

A spec with ``tune`` gives every model the same hyper-parameter search before its final
seeds train (``archbench compare --tune lr,weight_decay --trials 8``)::

    tune:
      params: [lr, weight_decay]          # or {lr: [1e-4, 1e-1], weight_decay: [1e-6, 1e-2]}
      trials: 8                           # per model
      seed: 0                             # the TPE sampler's seed

Each model gets its own Optuna study with the same search space, the same number of
trials and the same seeded TPE sampler. A trial is the model trained with the trial's
settings on the comparison's data, recipe and budget (the first seed), scored by its
best validation top-1; trials never evaluate on the test split. Trials run on the
comparison's executor (local processes or Ray), one round at a time: each round asks
every model's study for one trial and trains them together. The studies live in
``tune.db`` (SQLite) in the output folder, so a killed search resumes where it stopped
(a trial that was running is marked failed and replaced). Each model's final seeds then
train with its best trial's settings; the leaderboard and the report show every model's
search. This answers the objection that a shared recipe suited one model better than
another: every model had the same chance to find its own.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_RANGES", "TUNE_KEYS", "tune_models", "tune_settings", "tuning_markdown"]

TUNE_KEYS = ("params", "trials", "seed")
TUNE_DB = "tune.db"
# key: (low, high, log); "lr" is relative to the recipe's own learning rate
DEFAULT_RANGES: dict[str, tuple[float, float, bool]] = {
    "lr": (0.1, 10.0, True),
    "weight_decay": (1e-5, 0.5, True),
    "label_smoothing": (0.0, 0.3, False),
    "drop_path_rate": (0.0, 0.3, False),
    "drop_rate": (0.0, 0.5, False),
    "mixup_alpha": (0.0, 1.0, False),
    "cutmix_alpha": (0.0, 1.0, False),
    "warmup_epochs": (0.0, 5.0, False),
    "momentum": (0.8, 0.99, False),
}
# recipe fields a search may not change: they define the budget, the task or the run
_FIXED = {"epochs", "total_steps", "seed", "task", "task_args", "resolved", "name"}


def tune_settings(tune: dict[str, Any], recipe: Any) -> dict[str, Any]:
    """The search of a ``tune`` spec against ``recipe``, checked before any work:
    ``{"space": {key: {low, high, log}}, "trials": N, "seed": S}``."""
    from dataclasses import fields

    d = dict(tune or {})
    unknown = sorted(set(d) - set(TUNE_KEYS))
    if unknown:
        raise ValueError(f"unknown tune key(s) {unknown}; accepted: {', '.join(TUNE_KEYS)}")
    trials, seed = d.get("trials", 8), d.get("seed", 0)
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise ValueError(f"tune trials must be an integer >= 1, got {trials!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"tune seed must be an integer, got {seed!r}")
    params = d.get("params")
    if isinstance(params, str):
        params = [p.strip() for p in params.split(",") if p.strip()]
    if not params or not isinstance(params, (list, dict)):
        raise ValueError(
            "tune needs params: a list of recipe keys (e.g. [lr, weight_decay]) or "
            "{key: [low, high]}"
        )
    ranges = params if isinstance(params, dict) else dict.fromkeys(params)
    recipe_fields = {f.name: f for f in fields(recipe)}
    numeric = sorted(  # the real-valued settings (sizes and counts are not searched)
        name
        for name, f in recipe_fields.items()
        if f.type in ("float", float) and name not in _FIXED
    )
    space: dict[str, dict[str, Any]] = {}
    for key, given in ranges.items():
        if key not in recipe_fields:
            raise ValueError(
                f"tune: {key!r} is not a recipe key; tunable recipe keys: {', '.join(numeric)}"
            )
        if key not in numeric:
            raise ValueError(
                f"tune: recipe key {key!r} cannot be searched (only real-valued settings; "
                f"not the budget, the task, sizes or counts); tunable: {', '.join(numeric)}"
            )
        if given is None:
            if key not in DEFAULT_RANGES:
                raise ValueError(
                    f"tune: {key!r} has no default range; give it as params: {{{key}: [LOW, HIGH]}}"
                )
            low, high, log = DEFAULT_RANGES[key]
            if key == "lr":
                low, high = recipe.lr * low, recipe.lr * high
        else:
            if (
                not isinstance(given, (list, tuple))
                or len(given) != 2
                or not all(isinstance(v, (int, float)) for v in given)
            ):
                raise ValueError(f"tune: the range of {key!r} must be [LOW, HIGH], got {given!r}")
            low, high = float(given[0]), float(given[1])
            log = low > 0 and high / low >= 100  # spans two decades or more: search the log
        if not low < high or (log and low <= 0):
            raise ValueError(
                f"tune: the range of {key!r} must have 0 <= LOW < HIGH, got {low}, {high}"
            )
        space[key] = {"low": float(low), "high": float(high), "log": bool(log)}
    return {"space": space, "trials": trials, "seed": seed}


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise ValueError("tuning needs Optuna: pip install optuna (or archbench again)") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _trial_cfg(base: dict[str, Any], params: dict[str, Any], number: int) -> dict[str, Any]:
    from .compare import _hash

    cfg = {k: v for k, v in base.items() if k != "key"}
    cfg["recipe"] = {**base["recipe"], **params}
    cfg["trial"] = {"number": number, "params": params}
    cfg["key"] = _hash(cfg)
    return cfg


def tune_models(
    runs: list[dict[str, Any]],
    settings: dict[str, Any],
    out: Path,
    executor: Any,
    threads: int,
    log: Any = print,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Search every model's settings; return the runs with each model's best settings
    (re-keyed: a tuned run is a different run) and the search of each model."""
    from .compare import _hash, train_run

    optuna = _optuna()
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState

    space = {
        k: FloatDistribution(v["low"], v["high"], log=v["log"])
        for k, v in settings["space"].items()
    }
    first_seed = min(c["seed"] for c in runs)
    bases = {}
    for cfg in runs:  # the trials train the first seed with the comparison's budget
        if cfg["seed"] == first_seed and cfg["model"] not in bases:
            bases[cfg["model"]] = cfg
    storage = f"sqlite:///{(out / TUNE_DB).resolve()}"
    n_startup = max(1, min(10, settings["trials"] // 2))
    studies = {}
    for model, base in bases.items():
        base_id = {k: v for k, v in base.items() if k not in ("key", "budget_check")}
        name = f"{model}-{_hash([base_id, settings])}"
        studies[model] = optuna.create_study(
            study_name=name,
            storage=storage,
            direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=settings["seed"], n_startup_trials=n_startup),
            load_if_exists=True,
        )
        for t in studies[model].get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            studies[model].tell(t.number, state=TrialState.FAIL)  # killed mid-trial before
    trial_out = str((out / "tune").resolve())
    while True:
        batch = []
        for model, study in studies.items():
            finished = study.get_trials(
                deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)
            )
            if len(finished) < settings["trials"]:
                trial = study.ask(space)
                batch.append(_trial_cfg(bases[model], trial.params, trial.number))
        if not batch:
            break
        log(f"  tuning: {len(batch)} trial(s), one per model")
        for cfg, res in executor.map(train_run, batch, trial_out, threads):
            study = studies[cfg["model"]]
            value = res.get("val_top1")
            if res.get("status") == "completed" and value is not None and math.isfinite(value):
                study.tell(cfg["trial"]["number"], float(value))
            else:
                study.tell(cfg["trial"]["number"], state=TrialState.FAIL)
            shown = ", ".join(f"{k}={v:.3g}" for k, v in cfg["trial"]["params"].items())
            score = "failed" if value is None else f"val top-1 {100 * value:.2f}%"
            log(f"    {cfg['model']} trial {cfg['trial']['number']}: {shown}: {score}")

    search: dict[str, Any] = {}
    for model, study in studies.items():
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        trials = [
            {"number": t.number, "params": t.params, "val_top1": t.value}
            for t in study.get_trials(deepcopy=False)
        ]
        best = max(done, key=lambda t: (t.value, -t.number)) if done else None
        search[model] = {
            "study": study.study_name,
            "trials": trials,
            "completed": len(done),
            "best": None if best is None else {"number": best.number, "params": best.params},
            "best_val_top1": None if best is None else best.value,
        }
    tuned = []
    for cfg in runs:
        best = search[cfg["model"]]["best"]
        if best is None:  # no trial completed: the recipe's own settings, said in the table
            tuned.append(cfg)
            continue
        new = {k: v for k, v in cfg.items() if k != "key"}
        new["recipe"] = {**cfg["recipe"], **best["params"]}
        new["tuned"] = dict(best["params"])
        new["key"] = _hash(new)
        tuned.append(new)
    return tuned, {"space": settings["space"], "trials": settings["trials"], "models": search}


def tuning_markdown(tuning: dict[str, Any]) -> str:
    """Each model's search: its best settings and validation score, then every trial."""
    keys = list(tuning["space"])
    lines = [
        "| model | trials completed | best val top-1 | best trial | "
        + " | ".join(f"best {k}" for k in keys)
        + " |",
        "|---|---|---|---|" + "---|" * len(keys),
    ]
    for model, s in tuning["models"].items():
        best = s["best"]
        val = "-" if s["best_val_top1"] is None else f"{100 * s['best_val_top1']:.2f}%"
        cells = ["-"] * len(keys) if best is None else [f"{best['params'][k]:.3g}" for k in keys]
        lines.append(
            f"| {model} | {s['completed']}/{tuning['trials']} | {val} | "
            f"{'-' if best is None else best['number']} | " + " | ".join(cells) + " |"
        )
    ranges = ", ".join(
        f"{k} in [{v['low']:.3g}, {v['high']:.3g}]{' (log)' if v['log'] else ''}"
        for k, v in tuning["space"].items()
    )
    lines.append(
        f"\nEvery model had the same search: {ranges}; {tuning['trials']} trials each, "
        "Optuna's TPE sampler with the same seed, each trial trained with the comparison's "
        "budget on its first seed and scored by its best validation top-1 (the test split "
        "is not read while tuning). The final seeds train with each model's best trial."
    )
    lines.append("\n| model | trial | " + " | ".join(keys) + " | val top-1 |")
    lines.append("|---|---|" + "---|" * len(keys) + "---|")
    for model, s in tuning["models"].items():
        for t in s["trials"]:
            cells = [f"{t['params'].get(k, float('nan')):.3g}" for k in keys]
            val = "failed" if t["val_top1"] is None else f"{100 * t['val_top1']:.2f}%"
            lines.append(f"| {model} | {t['number']} | " + " | ".join(cells) + f" | {val} |")
    return "\n".join(lines)
