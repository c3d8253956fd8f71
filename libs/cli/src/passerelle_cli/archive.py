"""`passerelle archive …`: look inside an X data archive locally, as the service would.

Nothing is sent anywhere. A refused archive exits with status 2 and prints one
line on stderr: the same English message the web page shows.

Only the standard library is imported at module level: the reader (and numpy)
are imported when a command runs, so `passerelle --help` and the other
commands stay fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from passerelle_xarchive import ArchiveContents, ArchiveError, EdgeSet

EXIT_BAD_ARCHIVE = 2
EXIT_OUTPUT_CLOSED = 1

# option name -> ArchiveLimits field
_LIMIT_OPTIONS = {
    "max_archive_bytes": "max_archive_bytes",
    "max_inflated_bytes": "max_inflated_bytes",
    "max_ratio": "max_compression_ratio",
    "max_members": "max_members",
    "max_edges": "max_edges",
}


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `archive inspect` and `archive edges` to the command tree."""
    about = "Look inside an X data archive (.zip), locally: nothing is uploaded."
    group = commands.add_parser("archive", help=about, description=about)
    group.set_defaults(help_parser=group)
    sub = group.add_subparsers(title="commands", metavar="COMMAND")

    inspect = sub.add_parser(
        "inspect",
        help="Show whose archive it is and how many accounts it follows and is followed by.",
        description="Show whose archive PATH is and how many accounts it follows and is "
        "followed by (after removing duplicates).",
    )
    _add_path(inspect)
    inspect.add_argument(
        "--json", dest="as_json", action="store_true", help="Print one JSON object instead."
    )
    _add_limits(inspect)
    inspect.set_defaults(handler=run_inspect)

    edges = sub.add_parser(
        "edges",
        help="Print every follow edge, one per line.",
        description="Print every follow edge of PATH, one per line: `following<TAB>id` "
        "then `follower<TAB>id`. Ids are in ascending order within each kind, "
        "duplicates removed.",
    )
    _add_path(edges)
    _add_limits(edges)
    edges.set_defaults(handler=run_edges)


def _add_path(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path",
        type=Path,
        metavar="PATH",
        help="The archive .zip X sent you (Settings → Your account → Download an archive "
        "of your data).",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 1:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"{text} is not at least 1")
    return value


def _add_limits(parser: argparse.ArgumentParser) -> None:
    limits = parser.add_argument_group("limits (default: the service's defaults)")
    limits.add_argument(
        "--max-archive-bytes",
        type=_positive_int,
        metavar="N",
        help="Largest zip accepted, in bytes.",
    )
    limits.add_argument(
        "--max-inflated-bytes",
        type=_positive_int,
        metavar="N",
        help="Most bytes the needed files may inflate to.",
    )
    limits.add_argument(
        "--max-ratio", type=_ratio, metavar="R", help="Highest compression ratio per file."
    )
    limits.add_argument(
        "--max-members", type=_positive_int, metavar="N", help="Most entries in the zip."
    )
    limits.add_argument(
        "--max-edges", type=_positive_int, metavar="N", help="Most follow entries (both lists)."
    )


def _refuse(error: ArchiveError) -> int:
    """One line on stderr, exit status 2, no traceback."""
    sys.stderr.write(error.message.replace("\n", " ") + "\n")
    sys.stderr.flush()
    return EXIT_BAD_ARCHIVE


def _keep_freed_memory() -> None:
    """Ask glibc's malloc to keep and reuse freed memory for the rest of this process.

    Inflating hands over a fresh multi-MiB buffer per piece (from the helper thread's
    arena), and by default glibc gives each one back to the kernel when freed, so the
    next one page-faults all over again: about 50,000 faults and 0.1 s of system CPU
    for a million-follower archive, against 15,000 with these settings, for ~8 MB
    more peak RSS. A short-lived command can afford to keep that memory. No-op where
    ``mallopt`` does not exist (musl, macOS).
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return
    mallopt(_M_TRIM_THRESHOLD, 256 * 1024 * 1024)
    mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024)  # glibc's largest dynamic value


_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def _read(args: argparse.Namespace) -> ArchiveContents:
    """Read the archive with the default limits, overridden by the options given."""
    _keep_freed_memory()
    from passerelle_xarchive import ArchiveLimits, read_archive

    chosen = {
        field: getattr(args, option)
        for option, field in _LIMIT_OPTIONS.items()
        if getattr(args, option) is not None
    }
    return read_archive(args.path, limits=ArchiveLimits(**chosen))


def run_inspect(args: argparse.Namespace) -> int:
    """`passerelle archive inspect`."""
    from passerelle_xarchive import ArchiveError

    try:
        contents = _read(args)
    except ArchiveError as error:
        return _refuse(error)
    with contents:
        if args.as_json:
            summary = {
                "account": {"id": str(contents.account.id), "username": contents.account.username},
                "following": len(contents.following),
                "followers": len(contents.followers),
            }
            sys.stdout.write(json.dumps(summary) + "\n")
            sys.stdout.flush()
        else:
            _print_summary(args.path, contents)
    return 0


def _print_summary(path: Path, contents: ArchiveContents) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from passerelle_xarchive.messages import human_bytes

    account = contents.account
    table = Table(title=f"X archive {escape(path.name)}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("Account", f"@{escape(account.username)}")
    table.add_row("X id", str(account.id))
    table.add_row("Following", f"{len(contents.following):,}")
    table.add_row("Followers", f"{len(contents.followers):,}")
    duplicates = contents.stats.entries - len(contents.following) - len(contents.followers)
    if duplicates:
        table.add_row("Duplicate entries ignored", f"{duplicates:,}")
    table.add_row("Data read", human_bytes(contents.stats.inflated_bytes))
    console = Console()
    console.print(table)
    console.print(
        "[dim]Only these ids are kept when you upload this archive to passerelle; "
        "tweets, messages and media are never read.[/dim]"
    )


def _write_edges(kind: str, edges: EdgeSet, out: BinaryIO) -> None:
    prefix = kind + "\t"
    separator = "\n" + prefix
    for chunk in edges.iter_arrays(1 << 16):
        text = prefix + separator.join(map(str, chunk.tolist())) + "\n"
        out.write(text.encode("ascii"))


def run_edges(args: argparse.Namespace) -> int:
    """`passerelle archive edges`."""
    from passerelle_xarchive import ArchiveError

    try:
        contents = _read(args)
    except ArchiveError as error:
        return _refuse(error)
    with contents:
        out = sys.stdout.buffer
        try:
            _write_edges("following", contents.following, out)
            _write_edges("follower", contents.followers, out)
            out.flush()
        except BrokenPipeError:
            # the reader went away (e.g. `| head`): stop quietly, like other Unix tools
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return EXIT_OUTPUT_CLOSED
    return 0
