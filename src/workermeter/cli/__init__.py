"""The ``workermeter`` command: one subcommand per module of this package.

Each subcommand module has ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
A user error is raised as :class:`UsageError` and printed as one line, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

# name -> module; modules are imported only when their command runs or help is asked for.
COMMANDS: dict[str, str] = {
    "serve": "workermeter.cli.serve",
    "suggest": "workermeter.cli.suggest",
    "top": "workermeter.cli.top",
    "demo": "workermeter.cli.demo",
    "logs": "workermeter.cli.logs",
    "history": "workermeter.cli.history",
}


class UsageError(Exception):
    """Bad input from the user: printed as ``workermeter: <message>``, exit status 2."""


def about() -> str:
    """The version, and which hot path this Python runs (compiled or pure Python)."""
    from importlib.metadata import PackageNotFoundError, version

    from ..speedups import describe

    try:
        release = version("workermeter")
    except PackageNotFoundError:  # run from a source tree
        release = "(not installed)"
    return f"workermeter {release}; {describe()}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="workermeter",
        description="How busy are your Python web workers, and how many do you need?",
        epilog=about(),
    )
    parser.add_argument("--version", action="version", version=about())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args))
    except UsageError as e:
        print(f"workermeter: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly, and keep Python's own flush at exit
        # from failing on the closed pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
