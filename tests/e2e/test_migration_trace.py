"""A person's migration steps are each one trace, from their HTTP request to the remote API.

Real processes: nats-server, the four services (their console scripts), a real local
Bluesky PDS and Mastodon-API test servers. The services export OTLP/HTTP to a receiver in
this test, as they export to the OpenTelemetry Collector in Kubernetes. Each step a person
takes is checked as one trace whose parent/child chain crosses the processes:

- signing in with Bluesky: edge HTTP → NATS request → bluesky_sender → ``createSession``
  on the PDS;
- giving the X archive: edge HTTP → ``archive.imported`` → matching;
- asking to follow the selection: edge HTTP → NATS request → matching → its
  ``follow.requested.*`` publish → the sender (the follow waits in its ledger, then joins
  the trace it came in) → ``applyWrites`` on the PDS / ``follow`` on the Mastodon server.

No span carries a secret (app password, tokens, keys, OAuth codes) or personal data
(handles, DIDs, X ids) in its name or attributes.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import pytest
from cryptography.fernet import Fernet

from tests.e2e.otlp import OtlpCollector, Span, ancestry
from tests.peers.mastodon.harness import MastodonFleet
from tests.peers.pds.fixtures import pds
from tests.peers.pds.harness import LocalPds, PdsAccount
from tests.support.archivegen import ArchiveSpec, make_id
from tests.support.services import SCRIPTS
from tests.web.stack import Member, Stack, wait_for

pytestmark = pytest.mark.e2e

__all__ = ["pds"]

SECRET_KEY = "trace-test-session-key-8d2e61b0c4"
ENCRYPTION_KEY = Fernet.generate_key().decode()
EDGE, MATCHING = "passerelle-ingest", "passerelle-matching"
BLUESKY, MASTODON = "passerelle-bluesky-sender", "passerelle-mastodon-sender"


@dataclass
class Traced:
    stack: Stack
    collector: OtlpCollector


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MastodonFleet]:
    with MastodonFleet(("alpha.test",), base_dir=tmp_path_factory.mktemp("fleet")) as f:
        yield f


@pytest.fixture(scope="module")
def traced(
    pds: LocalPds, fleet: MastodonFleet, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Traced]:
    collector = OtlpCollector()
    exported = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "PASSERELLE_SECRET_KEY": SECRET_KEY,
        "PASSERELLE_ENCRYPTION_KEYS": ENCRYPTION_KEY,
    }
    env = {name: dict(exported) for name in SCRIPTS}
    # Follow requests are published by the request that made them (in its trace), not by
    # the periodic drain that picks up leftovers after a crash.
    env["matching"]["PASSERELLE_OUTBOX_INTERVAL_SECONDS"] = "3600"
    stack = Stack(tmp_path_factory.mktemp("stack"), pds, fleet)
    try:
        yield Traced(stack.start(extra_env=env), collector)
    finally:
        stack.stop()
        collector.stop()


@contextmanager
def traced_as(client: httpx.Client) -> Iterator[str]:
    """Requests made in this block carry a W3C ``traceparent`` of the test's choosing
    (as a browser's own tracing would), so their trace is known beyond doubt."""
    trace_id = secrets.token_hex(16)
    client.headers["traceparent"] = f"00-{trace_id}-{secrets.token_hex(8)}-01"
    try:
        yield trace_id
    finally:
        del client.headers["traceparent"]


def chain_to(spans: list[Span], trace_id: str, route: str, service: str, name: str) -> list[Span]:
    """The chain from a ``service`` span called ``name`` up to the edge's ``route`` span."""
    for span in spans:
        if span.trace_id != trace_id or span.service != service or span.name != name:
            continue
        chain = list(ancestry(span, spans))
        top = chain[-1]
        if top.service == EDGE and top.name == route and top.kind == "SPAN_KIND_SERVER":
            return chain
    return []


def services_along(chain: list[Span]) -> list[str]:
    """The processes a chain crosses, from the root down, each once."""
    crossed: list[str] = []
    for span in reversed(chain):
        if not crossed or crossed[-1] != span.service:
            crossed.append(span.service)
    return crossed


def step(
    collector: OtlpCollector, trace_id: str, route: str, service: str, leaf: str
) -> list[Span]:
    """Wait for the trace of one step; the chain from its leaf up to the edge's span."""
    chain: list[Span] = collector.wait_for(
        lambda spans: chain_to(spans, trace_id, route, service, leaf),
        60,
        f"{route} → {service} {leaf}",
    )
    return chain


def csrf(client: httpx.Client) -> str:
    return client.get("/api/me").headers["X-CSRF-Token"]


def follow_selection(client: httpx.Client, network: str, expected: int) -> str:
    """Wait for the matches, select them all, ask to follow them; the request's trace."""

    def listed() -> bool:
        reply = client.get(f"/api/matches/{network}", params={"direction": "following"})
        return reply.status_code == 200 and reply.json()["total"] == expected

    wait_for(listed, 120, f"{expected} {network} matches")
    token = {"X-CSRF-Token": csrf(client)}
    body = {"network": network, "all_in_direction": "following"}
    client.post("/api/matches/select", json=body, headers=token).raise_for_status()
    # The archive's matches may be listed before matching has handled the sign-in's
    # identity.linked (another subject, another consumer): until then the person has
    # no account there to follow from, and asking answers 0. Asking again is safe (only
    # selected matches become requests); the trace is that of the answer that counted.
    traces: list[str] = []

    def followed() -> bool:
        with traced_as(client) as trace_id:
            reply = client.post("/api/matches/follow", json={"network": network}, headers=token)
        reply.raise_for_status()
        count = reply.json()["count"]
        assert count in (0, expected), reply.text
        traces.append(trace_id)
        return count == expected

    wait_for(followed, 60, f"{expected} {network} follows requested")
    return traces[-1]


def newcomer_spec(n: int, following: list[Member]) -> ArchiveSpec:
    return ArchiveSpec(
        account_id=make_id(n, 31337),
        username=f"newcomer{n}",
        following_ids_override=tuple(m.x_id for m in following),
        follower_ids_override=(following[0].x_id,),
        seed=n,
    )


#: A browser's User-Agent says a lot about a person; it is not kept.
USER_AGENT = "Mozilla/5.0 (TraceTest; person-fingerprint-5d1c)"
#: Attributes that would say who sent a request: kept out (overwritten) by the edge.
WHO = ("net.peer.ip", "client.address", "http.client_ip", "http.user_agent", "user_agent.original")


def assert_nothing_secret(spans: list[Span], secrets: list[str], personal: list[str]) -> None:
    personal = [*personal, USER_AGENT]
    for span in spans:
        for key in WHO:
            assert span.attributes.get(key, "REDACTED") == "REDACTED", (span.name, key)
        text = span.text()
        for secret in secrets:
            assert secret not in text, f"a secret in {span.service} {span.name}"
        for value in personal:
            assert value not in text, f"personal data in {span.service} {span.name}: {value}"


def test_bluesky_sign_in_upload_and_follows_are_each_one_trace(
    traced: Traced, pds: LocalPds
) -> None:
    stack, collector = traced.stack, traced.collector
    here = [stack.seed_bluesky(pds.create_account(name), n) for n, name in ((1, "tra"), (2, "trb"))]
    newcomer: PdsAccount = pds.create_account("trnew")
    client = stack.client()
    client.headers["User-Agent"] = USER_AGENT

    # Signing in: the edge asks the Bluesky sender, which opens a session on the PDS.
    with traced_as(client) as trace_id:
        signin = client.post(
            "/api/signin/bluesky",
            json={"identifier": newcomer.handle, "app_password": newcomer.app_password},
        )
    assert signin.status_code == 200, signin.text
    chain = step(
        collector,
        trace_id,
        "POST /api/signin/bluesky",
        BLUESKY,
        "xrpc com.atproto.server.createSession",
    )
    assert services_along(chain) == [EDGE, BLUESKY], [(s.service, s.name) for s in chain]
    assert chain[0].kind == "SPAN_KIND_CLIENT"
    assert chain[0].attributes["rpc.method"] == "com.atproto.server.createSession"

    # Giving the archive: the edge's events reach matching in the same trace.
    stack.consent(client, matching=True)
    with traced_as(client) as trace_id:
        stack.upload(client, newcomer_spec(7, here))
    chain = step(collector, trace_id, "POST /api/archive", MATCHING, "archive.imported process")
    assert services_along(chain) == [EDGE, MATCHING], [(s.service, s.name) for s in chain]

    # Asking to follow the selection: one trace down to the follow records on the PDS.
    trace_id = follow_selection(client, "bluesky", 2)
    wait_for(
        lambda: {m.account for m in here} <= set(pds.followed_dids(newcomer.did)),
        120,
        "the follows on the PDS",
    )
    chain = step(
        collector,
        trace_id,
        "POST /api/matches/follow",
        BLUESKY,
        "xrpc com.atproto.repo.applyWrites",
    )
    along = services_along(chain)
    assert along == [EDGE, MATCHING, BLUESKY], [(s.service, s.name) for s in reversed(chain)]
    names = [s.name for s in reversed(chain)]
    assert "publish follow requests" in names, names
    assert "bluesky follows" in names, names
    leaf = chain[0]
    assert leaf.kind == "SPAN_KIND_CLIENT"
    assert int(leaf.attributes["bluesky.writes"]) >= 1
    assert leaf.attributes["server.address"], "the PDS's host"
    print(
        "\n"
        + " → ".join(f"{s.service.removeprefix('passerelle-')}:{s.name}" for s in reversed(chain))
    )

    everything = collector.snapshot()
    assert_nothing_secret(
        everything,
        [newcomer.app_password, newcomer.password, newcomer.access_jwt, SECRET_KEY, ENCRYPTION_KEY],
        [newcomer.handle, newcomer.did, *(m.account for m in here), *(m.handle for m in here),
         str(make_id(7, 31337)), *(str(m.x_id) for m in here)],
    )  # fmt: skip


def test_mastodon_sign_in_and_follows_are_each_one_trace(
    traced: Traced, fleet: MastodonFleet
) -> None:
    stack, collector = traced.stack, traced.collector
    alpha = fleet["alpha.test"]
    for name in ("tann", "tben", "tnora"):
        alpha.create_account(name)
    here = [stack.seed_mastodon("alpha.test", name, n) for n, name in ((31, "tann"), (32, "tben"))]

    # Signing in by OAuth: the callback's trace reaches the Mastodon server's token call.
    client = stack.client()
    client.headers["User-Agent"] = USER_AGENT
    start = client.get("/auth/mastodon/start", params={"instance": "alpha.test"})
    assert start.status_code == 303, start.text
    approval = alpha.click_authorize(start.headers["location"], "tnora")
    with traced_as(client) as trace_id:
        back = client.get(
            "/auth/mastodon/callback", params={"code": approval.code, "state": approval.state}
        )
    assert back.status_code == 303, back.text
    chain = step(collector, trace_id, "GET /auth/mastodon/callback", MASTODON, "mastodon token")
    assert services_along(chain) == [EDGE, MASTODON], [(s.service, s.name) for s in chain]
    assert chain[0].kind == "SPAN_KIND_CLIENT"
    assert chain[0].attributes["server.address"] == "alpha.test"

    stack.consent(client, matching=True)
    stack.upload(client, newcomer_spec(8, here))
    trace_id = follow_selection(client, "mastodon", 2)

    def followed() -> bool:
        follows = alpha.follows("tnora@alpha.test")["follows"]
        return {f["target"].split("@")[0] for f in follows if f["account"].startswith("tnora")} >= {
            "tann",
            "tben",
        }

    wait_for(followed, 120, "the follows on alpha.test")
    chain = step(collector, trace_id, "POST /api/matches/follow", MASTODON, "mastodon follow")
    along = services_along(chain)
    assert along == [EDGE, MATCHING, MASTODON], [(s.service, s.name) for s in reversed(chain)]
    assert "mastodon follows" in [s.name for s in chain]
    assert chain[0].kind == "SPAN_KIND_CLIENT"
    print(
        "\n"
        + " → ".join(f"{s.service.removeprefix('passerelle-')}:{s.name}" for s in reversed(chain))
    )

    assert_nothing_secret(
        collector.snapshot(),
        [approval.code, approval.state, SECRET_KEY, ENCRYPTION_KEY],
        ["tnora", *(m.handle for m in here), str(make_id(8, 31337))],
    )
