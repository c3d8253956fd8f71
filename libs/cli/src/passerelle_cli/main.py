"""The `passerelle` command: one CLI for people and operators."""

from __future__ import annotations

import typer

from passerelle_cli.archive import archive_app
from passerelle_cli.deadletters import deadletters_app

app = typer.Typer(
    name="passerelle",
    help="passerelle: move your network from X to Bluesky and Mastodon.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """passerelle's command line."""


app.add_typer(archive_app, name="archive")
app.add_typer(deadletters_app, name="deadletters")
