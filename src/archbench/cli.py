"""The ``archbench`` command.

Each sub-command lives in its own module under ``archbench.commands`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to the handler.
Handlers return an exit code. Errors that come from bad input (unknown model, wrong
option, missing file) print one clear line and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

import archbench.commands as commands_pkg


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="archbench",
        description="A PyTorch lab for vision architectures: build, measure, compare.",
    )
    from archbench import __version__

    parser.add_argument("--version", action="version", version=f"archbench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for mod in sorted(m.name for m in pkgutil.iter_modules(commands_pkg.__path__)):
        if not mod.startswith("_"):
            importlib.import_module(f"archbench.commands.{mod}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, KeyError) as err:
        if os.environ.get("ARCHBENCH_DEBUG"):
            raise
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"archbench {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
