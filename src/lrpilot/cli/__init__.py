"""The ``lrpilot`` command line.

Each subcommand lives in its own module under ``lrpilot.cli`` exposing
``register(subparsers)``, which adds an ``argparse`` parser whose ``func`` default is the
handler ``func(args) -> int``. Errors in user input (``ValueError``, which includes
``lrpilot.errors.ConfigError``, and unreadable files) print one line and exit with code 2;
``TrainingAborted`` exits with code 1. No traceback reaches the user for either.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from lrpilot import __version__
from lrpilot.errors import TrainingAborted

# Subcommand modules, in the order ``lrpilot --help`` lists them.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "lrpilot.cli._schedule_cmd",
    "lrpilot.cli._tasks_cmd",
    "lrpilot.cli._fit_cmd",
    "lrpilot.cli._diagnose_cmd",
    "lrpilot.cli._find_cmd",
    "lrpilot.cli._batch_cmd",
    "lrpilot.cli._recommend_cmd",
    "lrpilot.cli._check_cmd",
    "lrpilot.cli._tune_cmd",
    "lrpilot.cli._auto_cmd",
)


class _Parser(argparse.ArgumentParser):
    """``argparse`` with usage errors on one line (no usage block), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="lrpilot",
        description="Learning-rate and batch-size autopilot for PyTorch training.",
    )
    parser.add_argument("--version", action="version", version=f"lrpilot {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def _current_directory_importable() -> None:
    """Let ``module:function`` tasks (``--task``, a config's ``task``) be found in the current
    directory, as under ``python -m lrpilot``: the ``lrpilot`` console script starts with its
    own ``bin`` directory as ``sys.path[0]``. Appended, not prepended, so a local file cannot
    shadow an installed package."""
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.append(cwd)


def main(argv: Sequence[str] | None = None) -> int:
    _current_directory_importable()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TrainingAborted as exc:
        print(f"lrpilot {args.command}: stopped: {exc}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:
        message = " ".join(str(exc).split())  # one line, whatever the exception says
        print(f"lrpilot {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
