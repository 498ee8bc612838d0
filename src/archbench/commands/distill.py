"""`archbench distill`: students trained with distillation methods and without, side by side.

A comparison whose axis is the method: every student is trained with each method and
with no distillation (the baseline), under one recipe, budget and seed set, and the
leaderboard adds each method's gain over the baseline with its confidence interval. The
teacher is a trained run folder or checkpoint, or a model name (trained first, once).
"""

from __future__ import annotations

import argparse
import sys

from archbench.bench.compare import CompareSpec, run_compare

from ._common import parse_kv, positive_int, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "distill",
        help="distill a teacher into students with several methods, against no distillation",
        description="Train each --student with each --method (a registered distillation task) "
        "and without distillation, same data, recipe, budget and seeds; report each method's "
        "gain over no distillation with its 95%% interval.",
    )
    p.add_argument(
        "--teacher",
        required=True,
        help="a trained run folder or checkpoint, or a model name (trained first)",
    )
    p.add_argument("--student", required=True, nargs="+", metavar="MODEL", help="student model(s)")
    p.add_argument(
        "--method",
        required=True,
        nargs="+",
        metavar="NAME",
        help="distillation task(s), e.g. kd deit ofa (archbench.train.list_tasks())",
    )
    p.add_argument(
        "--method-arg",
        action="extend",
        nargs="+",
        metavar="METHOD:KEY=VALUE",
        default=None,
        help="an argument of one method, e.g. kd:temperature=2",
    )
    p.add_argument("--data", required=True, help="dataset spec, e.g. shapes or folder:/path")
    p.add_argument("--recipe", help="recipe name or YAML/JSON file (default cpu-fast)")
    p.add_argument("--budget", help="as in compare (default: the recipe's epochs)")
    p.add_argument("--epochs", type=positive_int, help="override the recipe's epochs")
    p.add_argument("--seeds", type=positive_int, help="number of seeds (0..N-1), default 3")
    p.add_argument("--jobs", type=positive_int, help="runs trained in parallel")
    p.add_argument(
        "--no-baseline", action="store_true", help="leave out the students without distillation"
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run)


def spec_from_args(args: argparse.Namespace) -> CompareSpec:
    from archbench.train.tasks import check_task, task_arguments

    own: dict[str, list[str]] = {}
    for item in args.method_arg or []:
        method, sep, rest = item.partition(":")
        if not sep or method not in args.method:
            raise ValueError(
                f"--method-arg {item!r} must be METHOD:KEY=VALUE with METHOD one of "
                f"{', '.join(args.method)}"
            )
        own.setdefault(method, []).append(rest)
    methods = []
    for name in args.method:
        method_args = parse_kv(own.get(name), f"--method-arg {name}")
        probe = dict(method_args)
        if "teacher" in task_arguments(name):
            probe["teacher"] = args.teacher  # filled in per run; checked here by name only
        check_task(name, probe)
        methods.append({"name": name, "args": method_args} if method_args else name)
    data = {
        "models": list(args.student),
        "data": args.data,
        "seeds": args.seeds or 3,
        "out": args.out,
        "explain": False,
        "distill": {"teacher": args.teacher, "methods": methods, "baseline": not args.no_baseline},
    }
    for key in ("recipe", "budget", "epochs", "jobs"):
        value = getattr(args, key)
        if value is not None:
            data[key] = value
    return CompareSpec.from_dict(data)


def run(args: argparse.Namespace) -> int:
    spec = spec_from_args(args)
    if args.json:
        result = run_compare(spec, log=lambda line: print(line, file=sys.stderr))
        print_json(
            {
                "out": str(result["out"]),
                "rows": result["rows"],
                "gains": result["gains"],
                "leaderboard": str(result["out"] / "leaderboard.md"),
            }
        )
        return 0
    result = run_compare(spec)
    print()
    print(result["leaderboard"])
    print(f"\nleaderboard: {result['out'] / 'leaderboard.md'}")
    print(f"report:      {result['report']}")
    return 0
