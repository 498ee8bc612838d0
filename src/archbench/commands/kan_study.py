"""`archbench kan-study`: the fair KAN-vs-MLP study (symbolic regression, shapes, digits).

The symbolic part fits KANs and parameter- / FLOP-matched MLPs on closed-form formulas
(:mod:`archbench.bench.kan_study`); the image parts run the shipped compare presets
(``kan-vs-mlp-*`` and ``kanconv-vs-conv-*``) through ``run_compare``. Everything ends in
one markdown file, ``kan_study.md``, that says where KANs win and where they lose, with
differences inside two standard errors over seeds called noise.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from archbench.bench.kan_study import SymbolicConfig, compare_verdicts, symbolic_study

from ._common import positive_int

TASKS = ("symbolic", "shapes", "digits", "all")
IMAGE_PRESETS = (
    "kan-vs-mlp-params",
    "kan-vs-mlp-flops",
    "kanconv-vs-conv-params",
    "kanconv-vs-conv-flops",
)
QUICK_DATA = {"shapes": "shapes:n_train=64,n_val=32,n_test=32", "digits": "digits"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "kan-study",
        help="the fair KAN-vs-MLP study: symbolic regression and image presets at matched budgets",
        description="Fit KANs and matched MLPs on symbolic-regression formulas and/or run the "
        "kan-vs-mlp / kanconv-vs-conv compare presets on shapes and digits, then write "
        "kan_study.md saying where KANs win and lose (seed noise taken into account).",
    )
    p.add_argument("--task", choices=TASKS, default="all", help="which part to run (default all)")
    p.add_argument(
        "--seeds", type=positive_int, default=3, help="seeds per configuration (default 3)"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: few L-BFGS steps, 1 epoch on tiny data (numbers are not meaningful)",
    )
    p.add_argument(
        "--epochs", type=positive_int, help="override the presets' epochs for the image parts"
    )
    p.add_argument("--jobs", type=positive_int, default=1, help="image runs trained in parallel")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run)


def _fmt(mean: float | None, std: float | None, spec: str, scale: float = 1.0) -> str:
    if mean is None:
        return "-"
    text = format(scale * mean, spec)
    return text if std is None else f"{text} ± {format(scale * std, spec)}"


def _symbolic_section(result: dict[str, Any], seeds: int) -> tuple[str, list[str], list[str]]:
    cfg: SymbolicConfig = result["config"]
    lines = [
        "## Symbolic regression\n",
        f"Inputs uniform in [-1, 1]^d, {cfg.n_train} training and {cfg.n_test} test points "
        f"(test set shared by all seeds), {seeds} seed(s) (seed changes the training draw and "
        f"the initialisation). Every model: full-batch L-BFGS, {cfg.steps} steps of up to 10 "
        f"iterations, strong-Wolfe line search, MSE loss. KAN: B-spline order "
        f"{cfg.spline_order}, grid extended {' -> '.join(map(str, cfg.grids))} (steps split "
        f"evenly). MLPs: {cfg.mlp_act}, width chosen so that parameters (`mlp@params`) or "
        "FLOPs (`mlp@flops`) are within 5% of the KAN's after its last grid. FLOPs per "
        "sample are an analytic count including the spline basis evaluation.\n",
        "| formula | model | architecture | params | FLOPs/sample | test RMSE | train time (s) |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| `{r['expression']}` | {r['model']} | {r['arch']} | {r['params']} | {r['flops']} | "
            f"{_fmt(r['test_rmse'], r['test_rmse_std'], '.2e')} | "
            f"{_fmt(r['train_time_s'], r['train_time_s_std'], '.1f')} |"
        )
    lines += [
        "",
        "| formula | matched | KAN RMSE | MLP RMSE | verdict |",
        "|---|---|---:|---:|---|",
    ]
    wins, losses = [], []
    for v in result["verdicts"]:
        lines.append(
            f"| {v['formula']} | {v['matched']} | {v['kan_rmse']:.2e} | {v['mlp_rmse']:.2e} | {v['verdict']} |"
        )
        what = f"symbolic `{v['formula']}` at matched {v['matched']} (RMSE {v['kan_rmse']:.1e} vs {v['mlp_rmse']:.1e})"
        if v["verdict"] == "KAN wins":
            wins.append(what)
        elif v["verdict"] == "KAN loses":
            losses.append(what)
    return "\n".join(lines) + "\n", wins, losses


def _image_section(
    preset: str, spec: Any, rows: list[dict[str, Any]], context: dict[str, Any], elapsed: float
) -> tuple[str, list[str], list[str]]:
    budget = context["budget"]
    target = context["budget_target"]
    what = "parameters" if budget["kind"] == "params" else "MACs"
    lines = [
        f"### `{preset}`\n",
        f"Data `{spec.data}`, recipe `{spec.recipe}`, {spec.epochs} epochs, seeds {spec.seed_list}, "
        f"budget {budget['kind']} matched to `{budget['reference']}` ({target:,.0f} {what}, "
        f"tolerance {budget['tolerance']:.0%}); wall-clock {elapsed:.0f} s.\n",
        "| model | scaled widths | params | MACs | test top-1 (%) | train time (s) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        if not r.get("n"):
            lines.append(f"| {r['model']} | failed: {'; '.join(r.get('failed', []))} | | | | |")
            continue
        lines.append(
            f"| {r['model']} | `{json.dumps(r['scaled_kwargs'], separators=(',', ':'))}` | "
            f"{r['params']:,.0f} | {r['macs']:,.0f} | {_fmt(r['test_top1'], r['test_top1_std'], '.2f', scale=100)} | "
            f"{_fmt(r['train_time_s'], r['train_time_s_std'], '.0f')} |"
        )
    done = [r for r in rows if r.get("n")]
    kans = [r for r in done if r["model"].startswith("kan_")]
    others = [r for r in done if not r["model"].startswith("kan_")]
    wins, losses = [], []
    if kans and others:
        lines += [
            "",
            "| KAN model | vs | difference (% points) | verdict |",
            "|---|---|---:|---|",
        ]
        for k in kans:
            for o in others:
                verdict = compare_verdicts(k, o, "test_top1", higher_is_better=True)
                diff = 100 * (k["test_top1"] - o["test_top1"])  # stored as fractions
                lines.append(f"| {k['model']} | {o['model']} | {diff:+.2f} | {verdict} |")
                desc = (
                    f"`{preset}`: {k['model']} vs {o['model']} "
                    f"({100 * k['test_top1']:.1f}% vs {100 * o['test_top1']:.1f}%)"
                )
                if verdict == "KAN wins":
                    wins.append(desc)
                elif verdict == "KAN loses":
                    losses.append(desc)
    return "\n".join(lines) + "\n", wins, losses


def run_image_task(
    task: str, seeds: int, out: Path, quick: bool, epochs: int | None, jobs: int
) -> tuple[str, list[str], list[str]]:
    from archbench.bench.compare import CompareSpec, plan_runs, run_compare
    from archbench.bench.presets import load_preset

    sections = [f"## Images: `{task}`\n"]
    wins: list[str] = []
    losses: list[str] = []
    trained: dict[str, str] = {}  # what was trained -> the preset that trained it
    for base in IMAGE_PRESETS:
        name = base if task == "shapes" else f"{base}-{task}"
        data = load_preset(name).to_dict()
        data.update(seeds=seeds, out=str(out / name), jobs=jobs, explain=False)
        if quick:
            data.update(data=QUICK_DATA[task], epochs=1)
        if epochs is not None:
            data["epochs"] = epochs
        spec = CompareSpec.from_dict(data)
        runs, context = plan_runs(spec)
        what = json.dumps(
            [[r["model"], r["model_kwargs"], r["data"], r["recipe"], r["seed"]] for r in runs],
            sort_keys=True,
        )
        if what in trained:
            # e.g. flattened models, whose MACs equal their parameters: the FLOPs-matched
            # widths are the parameter-matched ones, so those runs are the same runs
            same = trained[what]
            print(f"[kan-study] {name}: the same runs as {same}, not trained again")
            sections.append(
                f"### `{name}`\n\nMatching {context['budget']['kind']} gives exactly the models, "
                f"widths, data, recipe and seeds of `{same}` (see above), so its runs are those: "
                "the same table and verdicts hold.\n"
            )
            continue
        trained[what] = name
        print(f"[kan-study] {name}: {len(spec.models)} models x {len(spec.seed_list)} seeds")
        t0 = time.perf_counter()
        result = run_compare(spec)
        text, w, lo = _image_section(name, spec, result["rows"], context, time.perf_counter() - t0)
        sections.append(text)
        wins += w
        losses += lo
    return "\n".join(sections), wins, losses


def run(args: argparse.Namespace) -> int:
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = ["symbolic", "shapes", "digits"] if args.task == "all" else [args.task]
    t_start = time.perf_counter()
    body, wins, losses = [], [], []
    if "symbolic" in tasks:
        cfg = (
            SymbolicConfig(n_train=200, n_test=200, steps=10, grids=(3, 5))
            if args.quick
            else SymbolicConfig()
        )
        print("[kan-study] symbolic regression")
        sym_path = out / "symbolic.json"
        previous = json.loads(sym_path.read_text()) if sym_path.is_file() else []
        result = symbolic_study(seeds=args.seeds, config=cfg, previous=previous)
        (out / "symbolic.json").write_text(json.dumps(result["records"], indent=1) + "\n")
        text, w, lo = _symbolic_section(result, args.seeds)
        body.append(text)
        wins += w
        losses += lo
    for task in ("shapes", "digits"):
        if task in tasks:
            text, w, lo = run_image_task(task, args.seeds, out, args.quick, args.epochs, args.jobs)
            body.append(text)
            wins += w
            losses += lo
    elapsed = time.perf_counter() - t_start
    command = f"archbench kan-study --task {args.task} --seeds {args.seeds}"
    if args.quick:
        command += " --quick"
    if args.epochs is not None:
        command += f" --epochs {args.epochs}"
    command += f" --out {args.out}"
    summary = [
        "# KAN vs MLP: the fair study\n",
        f"Command: `{command}` ({elapsed / 60:.1f} min wall-clock). A difference is called a "
        "win or a loss only when Welch's t test over seeds rejects equal means at the 5% "
        "level; otherwise it is within noise.\n",
        "## Where KANs win\n",
        *(f"- {w}" for w in wins or ["nowhere outside noise"]),
        "",
        "## Where KANs lose\n",
        *(f"- {lo}" for lo in losses or ["nowhere outside noise"]),
        "",
    ]
    if args.quick:
        summary.insert(
            1, "**Quick smoke run: too little training for the numbers to mean anything.**\n"
        )
    (out / "kan_study.md").write_text("\n".join(summary) + "\n" + "\n".join(body))
    print(f"\nstudy: {out / 'kan_study.md'}")
    return 0
