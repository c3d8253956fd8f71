"""``passerelle deadletters``: see, replay and purge messages consumers gave up on.

Talks to NATS like any client (``--nats`` or ``PASSERELLE_NATS_URL``). Shows
subjects, sizes and delivery counts — never message bodies, which may name people.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass

# asyncio, nats, rich and the contracts are imported inside the commands: every
# `passerelle` invocation (archive inspection too) would otherwise pay for them at start-up.
DEAD_LETTERS_STREAM = "DEAD_LETTERS"
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
EXIT_ABORTED = 1


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


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `deadletters list`, `replay` and `purge` to the command tree."""
    about = "Messages consumers gave up on (the DEAD_LETTERS stream)."
    group = commands.add_parser("deadletters", help=about, description=about)
    group.set_defaults(help_parser=group)
    sub = group.add_subparsers(title="commands", metavar="COMMAND")

    list_ = sub.add_parser(
        "list",
        help="List parked messages (subject, deliveries, size).",
        description="List parked messages (subject, deliveries, size).",
    )
    _add_nats(list_)
    list_.add_argument("--json", dest="as_json", action="store_true", help="One JSON array.")
    list_.set_defaults(handler=run_list)

    replay = sub.add_parser(
        "replay",
        help="Send parked messages back to their consumers (after fixing the cause).",
        description="Send parked messages back to their consumers (after fixing the cause).",
    )
    replay.add_argument(
        "seqs", type=int, nargs="*", metavar="SEQ", help="Sequences; none means all."
    )
    _add_nats(replay)
    replay.set_defaults(handler=run_replay)

    purge = sub.add_parser(
        "purge", help="Delete every parked message.", description="Delete every parked message."
    )
    _add_nats(purge)
    purge.add_argument("--yes", action="store_true", help="Do not ask.")
    purge.set_defaults(handler=run_purge)


def _add_nats(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--nats",
        dest="nats_url",
        default=os.environ.get("PASSERELLE_NATS_URL", DEFAULT_NATS_URL),
        metavar="URL",
        help="NATS server URL (default: $PASSERELLE_NATS_URL or %(default)s).",
    )


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")


def run_list(args: argparse.Namespace) -> int:
    """`passerelle deadletters list`."""
    import asyncio

    letters = asyncio.run(_list(args.nats_url))
    if args.as_json:
        _say(json.dumps([asdict(d) for d in letters]))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table("seq", "parked as", "original subject", "deliveries", "bytes")
    for d in letters:
        table.add_row(str(d.seq), d.subject, d.original_subject, str(d.deliveries), str(d.size))
    console = Console()
    console.print(table)
    console.print(f"{len(letters)} dead letter(s)")
    return 0


def run_replay(args: argparse.Namespace) -> int:
    """`passerelle deadletters replay`."""
    import asyncio

    url: str = args.nats_url
    chosen: list[int] = args.seqs or [d.seq for d in asyncio.run(_list(url))]
    done = asyncio.run(_replay(url, chosen))
    _say(f"replayed {done} message(s)")
    return 0


def run_purge(args: argparse.Namespace) -> int:
    """`passerelle deadletters purge`."""
    import asyncio

    url: str = args.nats_url
    if not args.yes:
        try:
            answer = input("Delete every dead letter? [y/N]: ")
        except EOFError:
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            sys.stderr.write("Aborted!\n")
            return EXIT_ABORTED

    async def run() -> int:
        import nats

        nc = await nats.connect(url, connect_timeout=3, max_reconnect_attempts=1)
        try:
            js = nc.jetstream()
            before = (await js.stream_info(DEAD_LETTERS_STREAM)).state.messages
            await js.purge_stream(DEAD_LETTERS_STREAM)
            return int(before)
        finally:
            await nc.close()

    _say(f"purged {asyncio.run(run())} message(s)")
    return 0
