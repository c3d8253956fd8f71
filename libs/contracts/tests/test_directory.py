"""The federated directory's messages: what crosses regions, and nothing more."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import TypeAdapter, ValidationError

from passerelle_contracts import (
    ALL_EVENTS,
    FEDERATION_EVENTS,
    STREAMS,
    DirectoryAccount,
    DirectoryEntry,
    DirectoryMessage,
    DirectoryTombstone,
    directory_key,
    directory_subject,
)
from passerelle_contracts.directory import (
    DIRECTORY_MIRROR,
    GLOBAL_DIRECTORY,
    regional_directory_stream,
)
from passerelle_contracts.schemas import render_schemas
from passerelle_contracts.streams import subject_matches

AT = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
KEY = directory_key("fr", "person-1")


def _entry(**changes: object) -> DirectoryEntry:
    fields: dict[str, object] = {
        "region": "fr",
        "sent_at": AT,
        "key": KEY,
        "x_account_id": "18446744073709551615",
        "trust": "verified",
        "accounts": [
            {"network": "bluesky", "account": "did:plc:abc", "handle": "alice.test"},
            {"network": "mastodon", "account": "alice@example.org", "handle": "alice@example.org"},
        ],
    }
    return DirectoryEntry.model_validate({**fields, **changes})


def test_entry_and_tombstone_share_the_persons_subject() -> None:
    entry = _entry()
    tombstone = DirectoryTombstone(region="fr", sent_at=AT, key=KEY, reason="erased")
    assert entry.directory_subject() == tombstone.directory_subject() == f"directory.fr.{KEY}"
    assert subject_matches(DirectoryEntry.subject, entry.directory_subject())
    assert subject_matches(
        regional_directory_stream("fr").subjects[0], tombstone.directory_subject()
    )
    assert not subject_matches(
        regional_directory_stream("es").subjects[0], entry.directory_subject()
    )
    assert entry.dedupe_id() != tombstone.dedupe_id()


def test_the_key_is_stable_and_opaque() -> None:
    assert directory_key("fr", "person-1") == KEY
    assert directory_key("es", "person-1") != KEY
    assert "person-1" not in KEY
    assert directory_subject("es", KEY) == f"directory.es.{KEY}"


def test_messages_round_trip_and_are_told_apart_by_type() -> None:
    adapter: TypeAdapter[DirectoryMessage] = TypeAdapter(DirectoryMessage)
    entry = _entry()
    tombstone = DirectoryTombstone(region="fr", sent_at=AT, key=KEY, reason="withdrawn")
    assert adapter.validate_json(entry.model_dump_json()) == entry
    assert adapter.validate_json(tombstone.model_dump_json()) == tombstone


def test_a_tombstone_carries_no_identity() -> None:
    tombstone = DirectoryTombstone(region="fr", sent_at=AT, key=KEY, reason="erased")
    assert set(tombstone.model_dump()) == {"type", "version", "region", "sent_at", "key", "reason"}
    with pytest.raises(ValidationError, match="extra"):
        DirectoryTombstone.model_validate({**tombstone.model_dump(), "x_account_id": "42"})


@pytest.mark.parametrize(
    "changes",
    [
        {"x_account_id": 12},
        {"x_account_id": "1e9"},
        {"key": "not-a-key"},
        {"region": "FR"},
        {"accounts": []},
        {"accounts": [{"network": "x", "account": "abc", "handle": "a"}] * 1},
        {"trust": "trusted"},
        {"edges": ["1", "2"]},
    ],
)
def test_entries_refuse_what_does_not_belong(changes: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        _entry(**changes)


def test_an_entry_stays_small() -> None:
    # Two accounts with long handles: well under the 1 KB per person budget.
    assert len(_entry().model_dump_json()) < 400
    assert DirectoryAccount(network="bluesky", account="did:plc:a", handle="a").handle == "a"


def test_directory_streams_are_not_services_streams() -> None:
    names = {s.name for s in STREAMS}
    assert {GLOBAL_DIRECTORY.name, DIRECTORY_MIRROR.name, "DIRECTORY_FR"}.isdisjoint(names)
    assert not any(subject_matches(p, f"directory.fr.{KEY}") for s in STREAMS for p in s.subjects)
    assert set(FEDERATION_EVENTS).isdisjoint(ALL_EVENTS)
    assert regional_directory_stream("fr").name == "DIRECTORY_FR"
    assert regional_directory_stream("north-1").name == "DIRECTORY_NORTH_1"
    with pytest.raises(ValueError, match="region"):
        regional_directory_stream("FR.>")


def test_schemas_include_the_directory() -> None:
    rendered = render_schemas()
    assert '"x-subject": "directory.*.*"' in rendered["DirectoryEntry.json"]
    assert "DirectoryTombstone.json" in rendered
