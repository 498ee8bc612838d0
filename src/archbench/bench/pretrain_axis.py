"""The self-supervised axis of ``compare``: pretraining methods scored by one probe.

A spec with ``pretrain`` turns every (model, seed) into one run per entry:

```yaml
pretrain:
  methods: [simclr_v2, {name: swav, args: {prototypes: 30}}]
  baselines: [random, supervised]      # default: both
  probe: {kind: both, weight_decays: [1e-4, 1e-2], ks: [5, 20], val_fraction: 0.2}
```

Each method pretrains the backbone with labels hidden (the recipe with ``task`` set to the
method); ``random`` is the backbone at its random initialization (nothing trains);
``supervised`` is the recipe's plain classification. Every entry is then scored by the
same probe of :mod:`archbench.ssl.probe` (hyper-parameters chosen on a part of the
training split, the test split read once); the row's ``test_top1`` is the linear probe's
accuracy (the k-NN probe's when ``kind`` is ``knn``), with per-image hits so that the
leaderboard's paired statistics and intervals apply; ``probe_knn_top1`` and
``probe_linear_top1`` hold both, and a supervised entry also keeps its classifier's
``classifier_test_top1``.
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["PRETRAIN_KEYS", "pretrain_entries", "probe_settings", "run_pretrain_entry"]

PRETRAIN_KEYS = ("methods", "baselines", "probe")
PROBE_KEYS = ("kind", "weight_decays", "ks", "val_fraction", "layer", "temperature")
BASELINES = ("random", "supervised")
RANDOM, SUPERVISED = "random init", "supervised"


def probe_settings(pretrain: dict[str, Any]) -> dict[str, Any]:
    """The probe of a ``pretrain`` spec, validated, with defaults filled in."""
    from ..ssl.probe import DEFAULT_KS, DEFAULT_WEIGHT_DECAYS, KINDS

    p = dict(pretrain.get("probe") or {})
    unknown = sorted(set(p) - set(PROBE_KEYS))
    if unknown:
        raise ValueError(f"unknown probe key(s) {unknown}; accepted: {', '.join(PROBE_KEYS)}")
    p.setdefault("kind", "both")
    if p["kind"] not in KINDS:
        raise ValueError(f"probe kind must be one of {', '.join(KINDS)}, got {p['kind']!r}")
    p["weight_decays"] = [float(v) for v in p.get("weight_decays", DEFAULT_WEIGHT_DECAYS)]
    p["ks"] = [int(v) for v in p.get("ks", DEFAULT_KS)]
    p.setdefault("val_fraction", 0.2)
    p.setdefault("layer", None)
    p.setdefault("temperature", 0.07)
    if not p["weight_decays"] or not p["ks"] or not 0 < p["val_fraction"] < 1:
        raise ValueError("probe needs weight_decays and ks lists and val_fraction in (0, 1)")
    return p


def pretrain_entries(pretrain: dict[str, Any], recipe: Any) -> list[tuple[str, Any]]:
    """(label, recipe) of each baseline and method; methods checked before any training."""
    from ..ssl.base import check_method
    from ..train.tasks import check_task

    d = dict(pretrain or {})
    unknown = sorted(set(d) - set(PRETRAIN_KEYS))
    if unknown:
        raise ValueError(f"unknown pretrain key(s) {unknown}; accepted: {', '.join(PRETRAIN_KEYS)}")
    if not d.get("methods"):
        raise ValueError("pretrain needs a methods list (e.g. [simclr_v2, swav])")
    probe_settings(d)
    baselines = d.get("baselines", list(BASELINES))
    bad = [b for b in baselines if b not in BASELINES]
    if bad:
        raise ValueError(f"unknown pretrain baseline(s) {bad}; accepted: {', '.join(BASELINES)}")
    plain = recipe.replace(task="classification", task_args={})
    entries: list[tuple[str, Any]] = []
    if "random" in baselines:
        entries.append((RANDOM, plain))
    if "supervised" in baselines:
        entries.append((SUPERVISED, plain))
    methods = [
        (m, {}) if isinstance(m, str) else (m.get("name"), dict(m.get("args") or {}))
        for m in d["methods"]
    ]
    names = [name for name, _ in methods]
    seen = set()
    for name, args in methods:
        check_method(name)
        check_task(name, args)
        label = name
        if names.count(name) > 1:
            label = f"{name}({', '.join(f'{k}={v}' for k, v in sorted(args.items()))})"
        if label in seen:
            raise ValueError(f"pretrain method {label!r} is listed twice with the same arguments")
        seen.add(label)
        entries.append((label, recipe.replace(task=name, task_args=args)))
    return entries


def run_pretrain_entry(
    cfg: dict[str, Any], model: Any, data: Any, recipe: Any, run_dir: Any
) -> dict[str, Any]:
    """Train one entry (nothing for ``random init``), then probe its encoder on test."""
    from ..bench.stats import pack_correct
    from ..ssl.probe import probe
    from ..train import evaluate, fit, load_checkpoint

    result: dict[str, Any] = {}
    t0 = time.perf_counter()
    if cfg["method"] == RANDOM:
        result.update(train_time_s=0.0, epochs_completed=0)
    else:
        fitted = fit(model, data, recipe, run_dir, resume=True, max_seconds=cfg["max_seconds"])
        result.update(
            status=fitted.status,
            epochs_completed=fitted.epochs_completed,
            history=fitted.history,
            best_epoch=fitted.best_epoch,
            train_time_s=fitted.train_time_s,
            train_images_per_s=fitted.images_per_s,
            data_time_share=fitted.data_time_share,
        )
        if fitted.error:
            result["error"] = str(fitted.error)
        if fitted.status not in ("completed", "stopped_time") or not fitted.best_checkpoint:
            return result
        load_checkpoint(fitted.best_checkpoint, model)  # chosen on validation
        if cfg["method"] == SUPERVISED and data.test is not None:
            result["classifier_test_top1"] = evaluate(model, data.test)["top1"]
    p = cfg["probe"]
    split = "test" if data.test is not None else "val"
    res = probe(
        model,
        data,
        kind=p["kind"],
        split=split,
        layer=p["layer"],
        val_fraction=p["val_fraction"],
        weight_decays=p["weight_decays"],
        ks=p["ks"],
        temperature=p["temperature"],
        seed=cfg["data_seed"],
        per_sample=True,
    )
    primary = "knn" if p["kind"] == "knn" else "linear"
    for kind in ("linear", "knn"):
        if kind in res:
            result[f"probe_{kind}_top1"] = res[kind]["acc"]
            result[f"probe_{kind}_select"] = res[kind]["select_acc"]
            result[f"probe_{kind}_choice"] = res[kind].get("weight_decay", res[kind].get("k"))
    result.update(
        status="completed",
        probe_kind=primary,
        val_top1=res[primary]["select_acc"],  # the probe's score on the part carved from train
        test_top1=res[primary]["acc"],
        test_n=res["n_eval"],
        test_correct=pack_correct(res[primary]["correct"]),
        test_split=split if split == "test" else "val (no test split)",
        wall_time_s=time.perf_counter() - t0,
    )
    return result
