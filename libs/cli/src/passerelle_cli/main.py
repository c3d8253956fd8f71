"""The `passerelle` command: one CLI for people and operators.

Built on :mod:`argparse`, not typer: ``passerelle archive inspect`` is measured
against the time it takes to merely inflate an archive, and typer (its vendored
click, plus pydantic, imported at every start) cost about 0.3 s of CPU before any
byte was read — more than inflating a million-follower list. Each command
imports what it needs inside its handler, so start-up costs only the interpreter
and argparse.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from passerelle_cli import archive, deadletters

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree; each leaf sets ``handler`` (Namespace -> exit status)."""
    parser = argparse.ArgumentParser(
        prog="passerelle",
        description="passerelle: move your network from X to Bluesky and Mastodon.",
    )
    parser.set_defaults(help_parser=parser)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    archive.register(commands)
    deadletters.register(commands)
    return parser


def app(argv: Sequence[str] | None = None) -> int:
    """Run the command given by ``argv`` (default: ``sys.argv[1:]``); return the exit status.

    A command group given without its sub-command prints its help and exits 2.
    """
    args = build_parser().parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        args.help_parser.print_help(sys.stdout)
        return EXIT_USAGE
    status: int = handler(args)
    return status


if __name__ == "__main__":
    raise SystemExit(app())
