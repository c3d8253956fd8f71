"""The ledger on SQLite and on a real PostgreSQL: idempotent intake, claims, outcomes."""

from __future__ import annotations

from sqlalchemy import Engine

from passerelle_mastodon_sender.ledger import Ledger, Outcome
from tests.mastodon.support import follow_request


def test_a_request_is_recorded_once(engine: Engine) -> None:
    ledger = Ledger(engine)
    batch = [follow_request("p1", f"t{i}@b.test") for i in range(5)]
    assert ledger.accept(batch, 100.0).persons == {"p1"}
    assert ledger.accept([*batch, batch[0]], 101.0).persons == {"p1"}
    assert ledger.backlog() == 5
    assert ledger.accept([follow_request("p1", "@T0@B.TEST")], 102.0).persons == {"p1"}
    assert ledger.backlog() == 6  # another address, another row (case of the user part kept)


def test_claims_are_oldest_first_and_exclusive(engine: Engine) -> None:
    ledger = Ledger(engine)
    ledger.accept([follow_request("p1", f"t{i}@b.test") for i in range(5)], 100.0)
    first = ledger.claim("p1", 100.0, 3)
    assert [c.target for c in first] == ["t0@b.test", "t1@b.test", "t2@b.test"]
    assert all(c.attempts == 1 for c in first)
    assert [c.target for c in ledger.claim("p1", 100.0, 3)] == ["t3@b.test", "t4@b.test"]
    assert ledger.claim("p1", 100.0, 3) == []
    assert ledger.next_due("p1") is None


def test_outcomes_results_and_retries(engine: Engine) -> None:
    ledger = Ledger(engine)
    ledger.accept([follow_request("p1", f"t{i}@b.test") for i in range(3)], 100.0)
    a, b, c = ledger.claim("p1", 100.0, 3)
    ledger.finish(
        [
            Outcome(a.follow_id, "p1", "done", "followed", None, 0.0, "111", 105.0),
            Outcome(b.follow_id, "p1", "failed", "failed", "target_not_found", done_at=105.0),
            Outcome(c.follow_id, "p1", "pending", reason="instance_unreachable", next_try_at=160),
        ]
    )
    assert ledger.next_due("p1") == 160
    assert ledger.claim("p1", 150.0, 10) == []
    assert [r.target for r in ledger.claim("p1", 160.0, 10)] == ["t2@b.test"]
    results = {r.target: (r.outcome, r.reason) for r in ledger.unpublished(10)}
    assert results == {
        "t0@b.test": ("followed", None),
        "t1@b.test": ("failed", "target_not_found"),
    }
    ledger.mark_published([r.follow_id for r in ledger.unpublished(10)])
    assert ledger.unpublished(10) == []
    assert ledger.followed_since("p1", 100.0) == 1
    assert ledger.followed_since("p1", 106.0) == 0
    # Asked again: a failed follow opens again, a done one has its result sent again.
    intake = ledger.accept(
        [follow_request("p1", "t0@b.test"), follow_request("p1", "t1@b.test")], 200.0
    )
    assert intake.republish
    assert [r.target for r in ledger.unpublished(10)] == ["t0@b.test"]
    assert [r.target for r in ledger.claim("p1", 200.0, 10)] == ["t1@b.test"]


def test_a_late_outcome_does_not_undo_a_bulk_failure(engine: Engine) -> None:
    ledger = Ledger(engine)
    ledger.accept([follow_request("p1", "t0@b.test")], 100.0)
    (row,) = ledger.claim("p1", 100.0, 1)
    assert ledger.fail_open("p1", "unlinked", 101.0) == 1
    ledger.finish([Outcome(row.follow_id, "p1", "pending", next_try_at=102.0)])
    assert [(r.outcome, r.reason) for r in ledger.unpublished(10)] == [("failed", "unlinked")]


def test_erasure_deletes_rows_of_and_towards_the_person(engine: Engine) -> None:
    ledger = Ledger(engine)
    ledger.accept([follow_request("p1", "t0@b.test"), follow_request("p2", "alice@a.test")], 100.0)
    ledger.remember("b.test", {"alice@a.test": "9", "t0@b.test": "8"}, 100.0)
    ledger.remember("b.test", {"t0@b.test": "7"}, 101.0)  # upsert
    assert ledger.resolved("b.test", ["t0@b.test", "alice@a.test"]) == {
        "t0@b.test": "7",
        "alice@a.test": "9",
    }
    assert ledger.erase("p1", "alice@a.test") == 2
    assert ledger.backlog() == 0
    assert ledger.resolved("b.test", ["alice@a.test"]) == {}
    ledger.forget("b.test", "t0@b.test")
    assert ledger.resolved("b.test", ["t0@b.test"]) == {}
