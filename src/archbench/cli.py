"""The ``archbench`` command.

Each sub-command lives in its own module under ``archbench.commands`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to the handler.
Handlers return an exit code. Errors that come from bad input (unknown model, wrong
option, missing file) print one clear line and exit with status 2, whether the parser
or a handler finds them.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from typing import NoReturn

import archbench.commands as commands_pkg


class OneLineErrorParser(argparse.ArgumentParser):
    """A parser whose errors are one line on stderr, like every other archbench error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see `{self.prog} --help`)\n")


def _one_line(message: object) -> str:
    """A message of several lines as one: lines joined by '; ' (by ' ' after a colon)."""
    text = ""
    for part in (p.strip() for p in str(message).splitlines()):
        if part:
            text += (" " if not text or text.endswith(":") else "; ") + part
    return text.strip()


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
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
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, --version, or a parser error already printed
        if done.code is None:
            return 0
        return done.code if isinstance(done.code, int) else 2
    try:
        return int(args.func(args) or 0)
    except (
        ValueError,
        TypeError,
        KeyError,
        FileNotFoundError,
        NotADirectoryError,
        IsADirectoryError,
        PermissionError,
    ) as err:
        if os.environ.get("ARCHBENCH_DEBUG"):
            raise
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"archbench {args.command}: error: {_one_line(msg)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
