"""``passerelle deadletters``: see, replay and purge messages consumers gave up on.

Talks to NATS like any client (``--nats`` or ``PASSERELLE_NATS_URL``). Shows
subjects, sizes and delivery counts — never message bodies, which may name people.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass
from typing import Annotated

import typer

# nats, rich and the contracts are imported inside the commands: every `passerelle`
# invocation (archive inspection too) would otherwise pay for them at start-up.
DEAD_LETTERS_STREAM = "DEAD_LETTERS"

deadletters_app = typer.Typer(help="Messages consumers gave up on (the DEAD_LETTERS stream).")
NatsOption = Annotated[
    str, typer.Option("--nats", envvar="PASSERELLE_NATS_URL", help="NATS server URL.")
]


@dataclass(frozen=True)
class DeadLetter:
    """One parked message, described without its body."""

    seq: int
    subject: str
    original_subject: str
    deliveries: int
    size: int


async def _list(url: str) -> list[DeadLetter]:
    import nats
    import nats.js.errors

    nc = await nats.connect(url, connect_timeout=3, max_reconnect_attempts=1)
    try:
        js = nc.jetstream()
        info = await js.stream_info(DEAD_LETTERS_STREAM)
        found: list[DeadLetter] = []
        if info.state.messages == 0:
            return found
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                msg = await js.get_msg(DEAD_LETTERS_STREAM, seq)
            except nats.js.errors.NotFoundError:
                continue  # purged or replayed
            headers = msg.headers or {}
            found.append(
                DeadLetter(
                    seq=seq,
                    subject=msg.subject or "",
                    original_subject=headers.get("Passerelle-Original-Subject", "?"),
                    deliveries=int(headers.get("Passerelle-Deliveries", "0")),
                    size=len(msg.data or b""),
                )
            )
        return found
    finally:
        await nc.close()


async def _replay(url: str, seqs: list[int]) -> int:
    """Republish parked messages to their original subject, then remove them."""
    import nats

    from passerelle_contracts.streams import stream_for_subject

    nc = await nats.connect(url, connect_timeout=3, max_reconnect_attempts=1)
    try:
        js = nc.jetstream()
        done = 0
        for seq in seqs:
            msg = await js.get_msg(DEAD_LETTERS_STREAM, seq)
            headers = dict(msg.headers or {})
            subject = headers.get("Passerelle-Original-Subject")
            if subject is None:
                continue
            stream_for_subject(subject)  # refuses anything outside a declared stream
            await js.publish(
                subject,
                msg.data or b"",
                headers={"Nats-Msg-Id": f"replay:{seq}:{headers.get('Nats-Msg-Id', '')}"},
            )
            await js.delete_msg(DEAD_LETTERS_STREAM, seq)
            done += 1
        return done
    finally:
        await nc.close()


@deadletters_app.command("list")
def list_(
    nats_url: NatsOption = "nats://127.0.0.1:4222",
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array.")] = False,
) -> None:
    """List parked messages (subject, deliveries, size)."""
    from rich.console import Console
    from rich.table import Table

    letters = asyncio.run(_list(nats_url))
    if as_json:
        typer.echo(json.dumps([asdict(d) for d in letters]))
        return
    table = Table("seq", "parked as", "original subject", "deliveries", "bytes")
    for d in letters:
        table.add_row(str(d.seq), d.subject, d.original_subject, str(d.deliveries), str(d.size))
    Console().print(table)
    Console().print(f"{len(letters)} dead letter(s)")


@deadletters_app.command()
def replay(
    seqs: Annotated[list[int] | None, typer.Argument(help="Sequences; none means all.")] = None,
    nats_url: NatsOption = "nats://127.0.0.1:4222",
) -> None:
    """Send parked messages back to their consumers (after fixing the cause)."""
    chosen = seqs or [d.seq for d in asyncio.run(_list(nats_url))]
    done = asyncio.run(_replay(nats_url, chosen))
    typer.echo(f"replayed {done} message(s)")


@deadletters_app.command()
def purge(
    nats_url: NatsOption = "nats://127.0.0.1:4222",
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False,
) -> None:
    """Delete every parked message."""
    if not yes:
        typer.confirm("Delete every dead letter?", abort=True)

    async def run() -> int:
        import nats

        nc = await nats.connect(nats_url, connect_timeout=3, max_reconnect_attempts=1)
        try:
            js = nc.jetstream()
            before = (await js.stream_info(DEAD_LETTERS_STREAM)).state.messages
            await js.purge_stream(DEAD_LETTERS_STREAM)
            return int(before)
        finally:
            await nc.close()

    typer.echo(f"purged {asyncio.run(run())} message(s)")
