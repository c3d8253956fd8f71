"""Federation without a network: stream layouts and the checks on what arrives."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from passerelle_contracts import DirectoryAccount, DirectoryEntry, DirectoryTombstone, directory_key
from passerelle_platform.federation import (
    ForgedMessageError,
    hub_stream_config,
    mirror_stream_config,
    parse_directory_message,
    regional_stream_config,
)

AT = datetime(2026, 11, 25, tzinfo=UTC)


def _entry(region: str = "fr", person: str = "p1") -> DirectoryEntry:
    return DirectoryEntry(
        region=region,
        sent_at=AT,
        key=directory_key(region, person),
        x_account_id="42",
        trust="claimed",
        accounts=(DirectoryAccount(network="bluesky", account="did:plc:p1", handle="p1.test"),),
    )


def _sourced_from(stream: str, subject: str) -> dict[str, str]:
    return {"Nats-Stream-Source": f"{stream}:GLkgq8ui 4 directory.fr.* > {subject} HwLBFa3t"}


def test_the_hub_sources_each_region_across_domains() -> None:
    config = hub_stream_config(["fr", "es", "fr"]).as_dict()
    assert config["name"] == "DIRECTORY"
    assert "subjects" not in config, "nobody publishes into the hub's stream directly"
    assert config["sources"] == [
        {
            "name": "DIRECTORY_ES",
            "filter_subject": "directory.es.*",
            "external": {"api": "$JS.es.API", "deliver": "federation.in.es"},
        },
        {
            "name": "DIRECTORY_FR",
            "filter_subject": "directory.fr.*",
            "external": {"api": "$JS.fr.API", "deliver": "federation.in.fr"},
        },
    ]


def test_a_region_publishes_its_own_subjects_and_mirrors_the_hub() -> None:
    assert regional_stream_config("fr").as_dict()["subjects"] == ["directory.fr.*"]
    mirror = mirror_stream_config("fr").as_dict()
    assert mirror["name"] == "DIRECTORY_GLOBAL"
    assert mirror["mirror"] == {
        "name": "DIRECTORY",
        "external": {"api": "$JS.hub.API", "deliver": "federation.out.fr"},
    }


def test_a_message_from_its_own_regions_stream_is_accepted() -> None:
    entry = _entry()
    subject = entry.directory_subject()
    parsed = parse_directory_message(
        subject, entry.model_dump_json().encode(), _sourced_from("DIRECTORY_FR", subject)
    )
    assert parsed == entry
    tombstone = DirectoryTombstone(region="fr", sent_at=AT, key=entry.key, reason="erased")
    assert (
        parse_directory_message(
            subject, tombstone.model_dump_json().encode(), _sourced_from("DIRECTORY_FR", subject)
        )
        == tombstone
    )


@pytest.mark.parametrize(
    ("subject", "payload_region", "source", "reason"),
    [
        # A region's server passing off an entry as another region's: the hub names the source.
        ("directory.es.{key}", "es", "DIRECTORY_FR", "sourced from DIRECTORY_FR"),
        # Its own subject, another region's name inside.
        ("directory.fr.{key}", "es", "DIRECTORY_FR", "payload is for es"),
        # Never through the hub's sources at all.
        ("directory.fr.{key}", "fr", None, "sourced from nowhere"),
        ("archive.imported", "fr", "DIRECTORY_FR", "not a directory subject"),
    ],
)
def test_forged_messages_are_refused(
    subject: str, payload_region: str, source: str | None, reason: str
) -> None:
    entry = _entry(payload_region)
    subject = subject.format(key=entry.key)
    headers = _sourced_from(source, subject) if source else None
    with pytest.raises(ForgedMessageError, match=reason):
        parse_directory_message(subject, entry.model_dump_json().encode(), headers)


def test_a_payload_that_is_not_a_directory_message_is_refused() -> None:
    entry = _entry()
    subject = entry.directory_subject()
    with pytest.raises(ForgedMessageError, match="not a directory message"):
        parse_directory_message(
            subject, b'{"type": "archive.imported"}', _sourced_from("DIRECTORY_FR", subject)
        )
