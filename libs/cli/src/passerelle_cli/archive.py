"""`passerelle archive …`: look inside an X data archive locally, as the service would.

Nothing is sent anywhere. A refused archive exits with status 2 and prints one
line on stderr: the same English message the web page shows.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, BinaryIO, NoReturn

import typer

if TYPE_CHECKING:  # imported lazily: keep `passerelle --help` and other commands fast
    from passerelle_xarchive import ArchiveContents, ArchiveError, EdgeSet

EXIT_BAD_ARCHIVE = 2

archive_app = typer.Typer(
    name="archive",
    help="Look inside an X data archive (.zip), locally: nothing is uploaded.",
    no_args_is_help=True,
)

PathArgument = Annotated[
    Path,
    typer.Argument(
        help="The archive .zip X sent you (Settings → Your account → Download an archive "
        "of your data).",
        show_default=False,
        metavar="PATH",
    ),
]


def _refuse(error: ArchiveError) -> NoReturn:
    """One line on stderr, exit status 2, no traceback."""
    sys.stderr.write(error.message.replace("\n", " ") + "\n")
    sys.stderr.flush()
    raise typer.Exit(EXIT_BAD_ARCHIVE)


_LIMITS = "Limits (default: the service's defaults)"
MaxArchiveBytes = Annotated[
    int | None,
    typer.Option(help="Largest zip accepted, in bytes.", rich_help_panel=_LIMITS, min=1),
]
MaxInflatedBytes = Annotated[
    int | None,
    typer.Option(
        help="Most bytes the needed files may inflate to.", rich_help_panel=_LIMITS, min=1
    ),
]
MaxRatio = Annotated[
    float | None,
    typer.Option(help="Highest compression ratio per file.", rich_help_panel=_LIMITS, min=1),
]
MaxMembers = Annotated[
    int | None,
    typer.Option(help="Most entries in the zip.", rich_help_panel=_LIMITS, min=1),
]
MaxEdges = Annotated[
    int | None,
    typer.Option(help="Most follow entries (both lists).", rich_help_panel=_LIMITS, min=1),
]


def _read(
    path: Path,
    *,
    max_archive_bytes: int | None = None,
    max_inflated_bytes: int | None = None,
    max_ratio: float | None = None,
    max_members: int | None = None,
    max_edges: int | None = None,
) -> ArchiveContents:
    """Read the archive with the default limits, overridden by the options given."""
    from passerelle_xarchive import ArchiveError, ArchiveLimits, read_archive

    chosen = {
        "max_archive_bytes": max_archive_bytes,
        "max_inflated_bytes": max_inflated_bytes,
        "max_compression_ratio": max_ratio,
        "max_members": max_members,
        "max_edges": max_edges,
    }
    limits = ArchiveLimits(**{k: v for k, v in chosen.items() if v is not None})  # type: ignore[arg-type]
    try:
        return read_archive(path, limits=limits)
    except ArchiveError as error:
        _refuse(error)


@archive_app.command("inspect")
def inspect(
    path: PathArgument,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead of a summary.")
    ] = False,
    max_archive_bytes: MaxArchiveBytes = None,
    max_inflated_bytes: MaxInflatedBytes = None,
    max_ratio: MaxRatio = None,
    max_members: MaxMembers = None,
    max_edges: MaxEdges = None,
) -> None:
    """Show whose archive PATH is and how many accounts it follows and is followed by."""
    with _read(
        path,
        max_archive_bytes=max_archive_bytes,
        max_inflated_bytes=max_inflated_bytes,
        max_ratio=max_ratio,
        max_members=max_members,
        max_edges=max_edges,
    ) as contents:
        if as_json:
            summary = {
                "account": {"id": str(contents.account.id), "username": contents.account.username},
                "following": len(contents.following),
                "followers": len(contents.followers),
            }
            sys.stdout.write(json.dumps(summary) + "\n")
            return
        _print_summary(path, contents)


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


@archive_app.command("edges")
def edges(
    path: PathArgument,
    max_archive_bytes: MaxArchiveBytes = None,
    max_inflated_bytes: MaxInflatedBytes = None,
    max_ratio: MaxRatio = None,
    max_members: MaxMembers = None,
    max_edges: MaxEdges = None,
) -> None:
    """Print every follow edge of PATH, one per line: `following<TAB>id`, `follower<TAB>id`.

    Ids are in ascending order within each kind, duplicates removed.
    """
    with _read(
        path,
        max_archive_bytes=max_archive_bytes,
        max_inflated_bytes=max_inflated_bytes,
        max_ratio=max_ratio,
        max_members=max_members,
        max_edges=max_edges,
    ) as contents:
        out = sys.stdout.buffer
        try:
            _write_edges("following", contents.following, out)
            _write_edges("follower", contents.followers, out)
            out.flush()
        except BrokenPipeError:
            # the reader went away (e.g. `| head`): stop quietly, like other Unix tools
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise typer.Exit(1) from None
