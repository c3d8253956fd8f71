"""``python -m tests.peers.mastodon``: run one test Mastodon instance on 127.0.0.1."""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from pathlib import Path

import uvicorn

from .clock import parse_iso
from .server import MastodonServer, ServerOptions
from .state import Limits, Settings

QUIRK_FLAGS = {
    "granular-scopes": "granular_scopes_unsupported",
    "no-rate-headers": "no_rate_limit_headers",
    "async-follow": "async_follow",
    "no-oauth-metadata": "no_oauth_metadata",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m tests.peers.mastodon",
        description="A test server speaking the Mastodon API with Mastodon's real limits.",
    )
    p.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: pick a free one)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (keep it on loopback)")
    p.add_argument("--domain", required=True, help="this instance's domain, e.g. alpha.test")
    p.add_argument(
        "--data-dir",
        type=Path,
        required=True,
        help="directory for instance.json (domain, port, url, pid) written once listening",
    )
    p.add_argument("--title", help="instance title")
    p.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="DOMAIN=URL",
        help="another instance, e.g. beta.test=http://127.0.0.1:8002 (repeatable)",
    )
    p.add_argument(
        "--peers-file",
        type=Path,
        help='JSON {"domain": "http://127.0.0.1:port"}; re-read when it changes',
    )
    p.add_argument(
        "--speedup",
        type=float,
        default=1.0,
        help="simulated time = start + SPEEDUP × real elapsed (0 freezes the clock)",
    )
    p.add_argument("--start-time", help="simulated start, ISO 8601 (default: now)")
    p.add_argument(
        "--quirk",
        action="append",
        default=[],
        choices=sorted(QUIRK_FLAGS),
        help="imitate a real server's difference (repeatable)",
    )
    p.add_argument("--async-follow-delay", type=float, default=1.0, help="real seconds")
    p.add_argument("--federation-delay", type=float, default=0.0, help="real seconds")
    p.add_argument("--software", choices=["mastodon", "pleroma", "gotosocial"], default="mastodon")
    p.add_argument("--version-string", help="version reported by /api/v1/instance")
    defaults = Limits()
    p.add_argument("--token-requests", type=int, default=defaults.token_requests)
    p.add_argument("--token-period", type=int, default=defaults.token_period)
    p.add_argument("--follows-limit", type=int, default=defaults.follows)
    p.add_argument("--follows-period", type=int, default=defaults.follows_period)
    p.add_argument("--follow-cap", type=int, default=defaults.follow_cap)
    p.add_argument("--log-level", default="warning")
    return p.parse_args(argv)


def options_from(args: argparse.Namespace) -> ServerOptions:
    peers: dict[str, str] = {}
    for item in args.peer:
        domain, sep, url = item.partition("=")
        if not sep or not url:
            raise SystemExit(f"--peer expects DOMAIN=URL, got {item!r}")
        peers[domain] = url
    settings = Settings(
        software=args.software,
        version=args.version_string,
        async_follow_delay=args.async_follow_delay,
        federation_delay=args.federation_delay,
    )
    for flag in args.quirk:
        setattr(settings, QUIRK_FLAGS[flag], True)
    limits = Limits(
        token_requests=args.token_requests,
        token_period=args.token_period,
        follows=args.follows_limit,
        follows_period=args.follows_period,
        follow_cap=args.follow_cap,
    )
    return ServerOptions(
        domain=args.domain,
        data_dir=args.data_dir,
        title=args.title,
        start_time=parse_iso(args.start_time) if args.start_time else None,
        speedup=args.speedup,
        peers=peers,
        peers_file=args.peers_file,
        limits=limits,
        settings=settings,
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    options = options_from(args)
    server = MastodonServer(options)
    # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on such sockets, and without
    # it every response waits ~40 ms for a delayed ACK (headers and body are two writes).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(512)
    port = sock.getsockname()[1]
    server.self_base = f"http://{args.host}:{port}"
    args.data_dir.mkdir(parents=True, exist_ok=True)
    info = args.data_dir / "instance.json"
    tmp = info.with_suffix(".tmp")
    tmp.write_text(
        json.dumps(
            {"domain": server.domain, "port": port, "url": server.self_base, "pid": os.getpid()}
        )
    )
    tmp.replace(info)
    print(f"mastodon test instance {server.domain} on {server.self_base}", file=sys.stderr)
    config = uvicorn.Config(
        server,
        log_level=args.log_level,
        access_log=False,
        lifespan="on",
        proxy_headers=False,
        http="h11",
        loop="asyncio",
        timeout_graceful_shutdown=1,
        # nginx's default in front of Mastodon (uvicorn's own is 5 s: on a loaded machine
        # clients reconnected for most calls, a cost real servers do not impose).
        timeout_keep_alive=75,
    )
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
