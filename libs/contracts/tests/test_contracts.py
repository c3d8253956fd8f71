"""The protocol's own invariants: subjects, streams, round-trips, schemas on disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from passerelle_contracts import (
    ALL_EVENTS,
    ALL_RPC,
    CONSUMERS,
    MAX_FOLLOWS_PER_MESSAGE,
    STREAMS,
    ArchiveImported,
    BlueskyFollowRequested,
    BlueskyFollowsRequested,
    Event,
    FollowResult,
    follow_id,
    read_follow_requests,
    stream_for_subject,
)
from passerelle_contracts.rpc import BlueskyLinkRequest
from passerelle_contracts.schemas import render_schemas
from passerelle_contracts.streams import subject_matches

ROOT = Path(__file__).resolve().parents[3]

SAMPLES: dict[str, dict[str, Any]] = {
    "ArchiveImported": {
        "person_id": "p1",
        "import_id": "i1",
        "x_account_id": "18446744073709551615",
        "x_username": "alice",
        "following_count": 3,
        "followers_count": 2,
        "bucket": "archive-edges",
        "following_object": "i1.following",
        "followers_object": "i1.followers",
        "payload_sha256": "0" * 64,
    },
    "ConsentChanged": {"person_id": "p1", "matching": True, "revision": 2},
    "IdentityLinked": {
        "person_id": "p1",
        "network": "bluesky",
        "account": "did:plc:abc",
        "handle": "alice.test",
    },
    "IdentityUnlinked": {
        "person_id": "p1",
        "network": "mastodon",
        "account": "alice@example.org",
        "reason": "credential_revoked",
    },
    "BlueskyFollowRequested": {
        "follow_id": follow_id("p1", "bluesky", "did:plc:b"),
        "person_id": "p1",
        "actor": "did:plc:a",
        "target": "did:plc:b",
        "target_x_id": "12",
        "directions": ["following", "follower"],
    },
    "MastodonFollowRequested": {
        "follow_id": follow_id("p1", "mastodon", "b@x.org"),
        "person_id": "p1",
        "actor": "a@x.org",
        "target": "b@x.org",
        "target_x_id": "13",
        "directions": ["follower"],
    },
    "BlueskyFollowsRequested": {
        "follows": [
            {
                "follow_id": follow_id(person, "bluesky", "did:plc:b"),
                "person_id": person,
                "actor": f"did:plc:{person}",
                "target": "did:plc:b",
                "target_x_id": "12",
                "directions": ["following"],
            }
            for person in ("p1", "p2")
        ],
    },
    "MastodonFollowsRequested": {
        "follows": [
            {
                "follow_id": follow_id("p1", "mastodon", "b@x.org"),
                "person_id": "p1",
                "actor": "a@x.org",
                "target": "b@x.org",
                "target_x_id": "13",
                "directions": ["follower"],
            }
        ],
    },
    "FollowResult": {
        "follow_id": "a" * 32,
        "person_id": "p1",
        "network": "bluesky",
        "target": "did:plc:b",
        "outcome": "failed",
        "reason": "target_not_found",
    },
    "UserErased": {"person_id": "p1", "x_account_id": "42"},
}


def test_every_event_subject_belongs_to_exactly_one_stream() -> None:
    for event in ALL_EVENTS:
        assert stream_for_subject(event.subject).name


def test_rpc_subjects_belong_to_no_stream() -> None:
    for model in ALL_RPC:
        concrete = model.subject.replace("*", "x")
        assert not any(subject_matches(p, concrete) for s in STREAMS for p in s.subjects), model


def test_streams_do_not_overlap_and_consumers_filter_inside_their_stream() -> None:
    names = [s.name for s in STREAMS]
    assert len(names) == len(set(names))
    for consumer in CONSUMERS:
        # A filter must be one of its stream's subjects or inside one (JetStream's rule).
        assert any(
            p == consumer.filter_subject or subject_matches(p, consumer.filter_subject)
            for p in consumer.stream.subjects
        ), consumer.durable
    durables = [c.durable for c in CONSUMERS]
    assert len(durables) == len(set(durables))


def test_wildcard_matching() -> None:
    assert subject_matches("deadletter.>", "deadletter.ARCHIVES.matching-archives")
    assert not subject_matches("deadletter.>", "deadletter")
    assert subject_matches("rpc.*.link", "rpc.bluesky.link")
    assert not subject_matches("rpc.*.link", "rpc.bluesky.link.x")


@pytest.mark.parametrize("event", ALL_EVENTS, ids=lambda e: e.__name__)
def test_event_round_trips_through_json(event: type[Event]) -> None:
    message = event.model_validate({"region": "fr", **SAMPLES[event.__name__]})
    again = event.model_validate_json(message.model_dump_json())
    assert again == message
    assert again.type == event.model_fields["type"].default
    assert message.dedupe_id()


def test_messages_are_frozen_and_strict() -> None:
    message = FollowResult.model_validate({"region": "fr", **SAMPLES["FollowResult"]})
    with pytest.raises(ValidationError):
        message.outcome = "followed"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="extra"):
        FollowResult.model_validate({"region": "fr", "surprise": 1, **SAMPLES["FollowResult"]})
    with pytest.raises(ValidationError):
        ArchiveImported.model_validate({"region": "FR!", **SAMPLES["ArchiveImported"]})


def test_x_ids_are_strings_never_numbers() -> None:
    with pytest.raises(ValidationError):
        ArchiveImported.model_validate(
            {"region": "fr", **SAMPLES["ArchiveImported"], "x_account_id": 12}
        )


def test_follow_id_is_deterministic_per_person_network_target() -> None:
    a = follow_id("p1", "bluesky", "did:plc:b")
    assert a == follow_id("p1", "bluesky", "did:plc:b")
    assert a != follow_id("p1", "mastodon", "did:plc:b")
    request = BlueskyFollowRequested.model_validate(
        {"region": "fr", **SAMPLES["BlueskyFollowRequested"]}
    )
    assert request.dedupe_id() == f"follow:{a}"


def test_follow_requests_are_read_in_either_version() -> None:
    single = BlueskyFollowRequested.model_validate(
        {"region": "fr", **SAMPLES["BlueskyFollowRequested"]}
    )
    (follow,) = read_follow_requests("bluesky", single.model_dump_json().encode())
    assert follow.follow_id == single.follow_id
    assert (follow.actor, follow.target) == ("did:plc:a", "did:plc:b")
    several = BlueskyFollowsRequested.model_validate(
        {"region": "fr", **SAMPLES["BlueskyFollowsRequested"]}
    )
    assert several.version == 2
    read = read_follow_requests("bluesky", several.model_dump_json().encode())
    assert [f.person_id for f in read] == ["p1", "p2"]
    # A message for the other network, or of no known version, is refused.
    with pytest.raises(ValidationError):
        read_follow_requests("mastodon", several.model_dump_json().encode())
    with pytest.raises(ValidationError):
        read_follow_requests(
            "bluesky", several.model_dump_json().replace('"version":2', '"version":3').encode()
        )


def test_a_message_of_several_follows_has_a_deterministic_id_and_a_bounded_size() -> None:
    follows = SAMPLES["BlueskyFollowsRequested"]["follows"]
    one = BlueskyFollowsRequested(region="fr", follows=tuple(follows))
    reordered = BlueskyFollowsRequested(region="fr", follows=tuple(reversed(follows)))
    assert one.dedupe_id() == reordered.dedupe_id()
    alone = BlueskyFollowsRequested(region="fr", follows=(follows[0],))
    assert one.dedupe_id() != alone.dedupe_id()
    # Alone in its message, a follow has the same id as in a version-1 message.
    assert alone.dedupe_id() == f"follow:{follows[0]['follow_id']}"
    with pytest.raises(ValidationError):
        BlueskyFollowsRequested(region="fr", follows=())
    with pytest.raises(ValidationError):
        BlueskyFollowsRequested(region="fr", follows=(follows[0],) * (MAX_FOLLOWS_PER_MESSAGE + 1))
    biggest = BlueskyFollowsRequested(
        region="fr",
        follows=tuple(
            {**follows[0], "actor": "did:plc:" + "a" * 24, "target": "did:plc:" + "b" * 24}
            for _ in range(MAX_FOLLOWS_PER_MESSAGE)
        ),
    )
    assert len(biggest.model_dump_json()) < 512 * 1024


def test_secrets_travel_on_the_wire_but_never_print() -> None:
    request = BlueskyLinkRequest(
        region="fr", identifier="alice.test", app_password=SecretStr("s3cret-pw")
    )
    assert "s3cret-pw" not in repr(request)
    assert "s3cret-pw" not in str(request.model_dump())
    again = BlueskyLinkRequest.model_validate_json(request.model_dump_json())
    assert again.app_password.get_secret_value() == "s3cret-pw"


def test_json_schemas_on_disk_are_fresh() -> None:
    directory = ROOT / "docs" / "contracts"
    rendered = render_schemas()
    on_disk = {p.name: p.read_text(encoding="utf-8") for p in directory.glob("*.json")}
    assert on_disk == rendered, "docs/contracts is stale: run `just contracts`"
