"""Where edges live: one layout per database backend, behind one small interface.

An edge is (import, direction, X id): "the archive of this import lists this X id
as someone the person followed" (``FOLLOWING``) or "as one of their followers"
(``FOLLOWER``). Matching needs three things from the edges:

- write one import's edges, batch after batch, without holding them all;
- the edges *of an import* (a person's own matches) and *all* edges (the full
  match), as a relation ``(import_key, direction, x_id)`` to join in SQL;
- the edges *pointing at one X id* (everyone waiting for a newcomer), through an
  index, never a scan.

PostgreSQL keeps each decoded batch as one row: a sorted ``bigint[]`` written
with binary ``COPY`` (no per-edge tuple, no per-edge B-tree entry), found by
target through a GIN index on the array. SQLite (development, small nodes)
keeps one row per edge with a B-tree on the X id. ``docs/matching.md`` explains
the choice and how it scales.
"""

# ruff: noqa: S608 - SQL text is built from this module's own fragments; values are bound
from __future__ import annotations

import itertools
import struct
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import Connection, text

from passerelle_matching.ids import array_to_db

#: ``(direction bit, ascending unsigned X ids)`` batches of one import.
EdgeBatch = tuple[int, NDArray[np.uint64]]


class EdgeLayout(Protocol):
    """The backend-specific part of edge storage."""

    def write(self, connection: Connection, import_key: int, batches: Iterable[EdgeBatch]) -> int:
        """Store an import's edges; return how many were stored."""

    def write_many(
        self, connection: Connection, imports: Sequence[tuple[int, Iterable[EdgeBatch]]]
    ) -> list[int]:
        """Store several imports' edges (one ``COPY`` where the layout can); return how
        many were stored for each."""

    def delete(self, connection: Connection, import_key: int) -> None:
        """Forget an import's edges."""

    def of_import(self) -> str:
        """SQL relation ``(import_key, direction, x_id)`` of the import ``:import_key``."""

    def pointing_at(self) -> str:
        """SQL relation ``(import_key, direction, x_id)`` of the edges to ``:x_id`` (indexed);
        the runs the target index does not cover yet (:meth:`fresh_after`) are
        scanned, in the same statement."""

    def fresh_after(self, connection: Connection) -> int:
        """The last import whose edges the target index covers (runs after it are scanned)."""

    def everything(self) -> str:
        """SQL relation ``(import_key, direction, x_id)`` of all edges."""

    def count(self, connection: Connection) -> int:
        """How many edges are stored."""

    def compact(self, connection: Connection) -> int:
        """Index (part of) what was loaded since the last call, if the layout defers
        it; returns how many edges it indexed."""


# --- PostgreSQL ----------------------------------------------------------------------

_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
_COPY_TRAILER = struct.pack("!h", -1)
_INT4_OID = 23
_INT8_OID = 20
_ELEMENTS = np.dtype([("length", ">i4"), ("value", ">i8")])
_ELEMENTS4 = np.dtype([("length", ">i4"), ("value", ">i4")])
_ARRAY_HEADER = 20
"""Bytes before the elements of a one-dimensional array without NULLs (``array_send``)."""

#: Postings per block of a segment (a block may be larger: one X id is never split).
BLOCK_POSTINGS = 512
#: Fresh postings read into memory at most per new segment (12 bytes each).
SEGMENT_MAX_POSTINGS = 16_000_000
#: A segment is merged into the one before it when it reaches this share of its size.
MERGE_RATIO = 0.5
#: More segments than this are merged regardless (each one is a probe per lookup).
MAX_SEGMENTS = 8
_SLICE_SHIFT = 60
"""The X id space (signed 64-bit) is cut into 16 slices by its top 4 bits; a block
never crosses a slice, so a merge can go one slice at a time in bounded memory."""
_SLICES = range(-8, 8)


def _array(values: NDArray[Any], oid: int, elements: np.dtype[Any]) -> bytes:
    data = np.empty(values.size, dtype=elements)
    data["length"] = elements["value"].itemsize
    data["value"] = values
    return struct.pack("!iiiii", 1, 0, oid, values.size, 1) + data.tobytes()


def _elements(raw: bytes, elements: np.dtype[Any]) -> NDArray[Any]:
    """The values of an ``array_send`` result (one dimension, no NULLs)."""
    if len(raw) <= 12:  # an empty array has no dimension
        return np.empty(0, dtype=elements["value"].newbyteorder("="))
    values = np.frombuffer(raw, dtype=elements, offset=_ARRAY_HEADER)["value"]
    return values.astype(elements["value"].newbyteorder("="))


def copy_row(import_key: int, direction: int, part: int, ids: NDArray[np.int64]) -> bytes:
    """One ``matching_edge_run`` row in PostgreSQL's binary ``COPY`` format."""
    array = _array(ids, _INT8_OID, _ELEMENTS)
    fields = struct.pack("!hiiihiii", 4, 4, import_key, 2, direction, 4, part, len(array))
    return fields + array


def block_row(segment: int, block: int, xs: NDArray[np.int64], refs: NDArray[np.int32]) -> bytes:
    """One ``matching_edge_block`` row in binary ``COPY`` format."""
    first, last = int(xs[0]), int(xs[-1])
    ids, owners = _array(xs, _INT8_OID, _ELEMENTS), _array(refs, _INT4_OID, _ELEMENTS4)
    return (
        struct.pack("!hiiiiiqiq", 6, 4, segment, 4, block, 8, first, 8, last)
        + struct.pack("!i", len(ids))
        + ids
        + struct.pack("!i", len(owners))
        + owners
    )


def block_cuts(xs: NDArray[np.int64], size: int = BLOCK_POSTINGS) -> NDArray[np.intp]:
    """Where to cut sorted postings into blocks of ~``size``, never inside one X id."""
    if xs.size == 0:
        return np.empty(0, dtype=np.intp)
    starts = np.flatnonzero(xs[1:] != xs[:-1]) + 1  # where a new X id begins
    wanted = np.arange(size, xs.size, size)
    if starts.size == 0:
        return np.array([0, xs.size], dtype=np.intp)
    cuts = starts[np.minimum(np.searchsorted(starts, wanted), starts.size - 1)]
    return np.unique(np.concatenate([[0], cuts[cuts > 0], [xs.size]]))


class PostingSink:
    """Sorted postings, a slice at a time, written as the blocks of a new segment."""

    def __init__(self, raw: Any, segment: int) -> None:
        self.raw = raw
        self.segment = segment
        self.blocks = 0
        self.postings = 0

    def write(self, xs: NDArray[np.int64], refs: NDArray[np.int32]) -> None:
        """One slice's postings (any order): one ``COPY`` of its blocks."""
        order = np.argsort(xs, kind="stable")
        xs, refs = xs[order], refs[order]
        cuts = block_cuts(xs)
        with (
            self.raw.cursor() as cursor,
            cursor.copy(
                "COPY matching_edge_block (segment, block, first_x, last_x, xs, refs)"
                " FROM STDIN (FORMAT BINARY)"
            ) as copy,
        ):
            copy.write(_COPY_HEADER)
            for start, stop in itertools.pairwise(cuts):
                copy.write(block_row(self.segment, self.blocks, xs[start:stop], refs[start:stop]))
                self.blocks += 1
            copy.write(_COPY_TRAILER)
        self.postings += int(xs.size)


class PostgresRuns:
    """Runs by owner, and a segmented target index built from them in bulk.

    Owner side: one row per decoded batch, a sorted ``bigint[]`` written with
    binary ``COPY`` (no per-edge tuple, no per-edge index entry) — the edges of
    an import, and all edges, are read from here.

    Target side: *segments*, each a sorted list of postings (X id → import and
    direction, ``ref = import_key * 4 + direction``) cut into blocks of ~512,
    one row per block with its first and last X id, and one B-tree entry per
    block. Runs land unindexed; :meth:`compact` turns the runs loaded since the
    last compaction (``import_key`` above the watermark) into a new segment,
    sorted in memory, and merges segments a few at a time (each about twice the
    next) so a lookup probes a handful. A lookup reads, per segment, the one
    block that can hold the X id, plus the runs not compacted yet.

    Postings of an import that was replaced are ignored by every query (they join
    the directory by the *current* ``import_key``), and removed from the blocks
    when the import's runs are deleted, so an erased person leaves nothing.
    """

    def write(self, connection: Connection, import_key: int, batches: Iterable[EdgeBatch]) -> int:
        return self.write_many(connection, [(import_key, batches)])[0]

    def write_many(
        self, connection: Connection, imports: Sequence[tuple[int, Iterable[EdgeBatch]]]
    ) -> list[int]:
        """Every import's runs in one binary ``COPY`` (one exchange for a batch)."""
        if not imports:
            return []
        raw: Any = connection.connection.dbapi_connection
        counts: list[int] = []
        with (
            raw.cursor() as cursor,
            cursor.copy(
                "COPY matching_edge_run (import_key, direction, part, ids)"
                " FROM STDIN (FORMAT BINARY)"
            ) as copy,
        ):
            copy.write(_COPY_HEADER)
            for import_key, batches in imports:
                stored = 0
                for part, (direction, ids) in enumerate(batches):
                    if ids.size == 0:
                        continue
                    copy.write(copy_row(import_key, direction, part, array_to_db(ids)))
                    stored += int(ids.size)
                counts.append(stored)
            copy.write(_COPY_TRAILER)
        return counts

    def delete(self, connection: Connection, import_key: int) -> None:
        # The import's postings in the segments go first (found through its runs).
        connection.execute(
            text(
                "WITH x AS (SELECT DISTINCT u.x_id FROM matching_edge_run r"
                "  CROSS JOIN LATERAL unnest(r.ids) AS u(x_id) WHERE r.import_key = :k"
                "  AND r.import_key <= (SELECT value FROM matching_sequence"
                "                       WHERE name = 'compacted_import_key')),"
                " hit AS (SELECT DISTINCT b.segment, b.block FROM x"
                "  CROSS JOIN matching_edge_segment s CROSS JOIN LATERAL"
                "  (SELECT segment, block FROM matching_edge_block"
                "   WHERE segment = s.segment AND first_x <= x.x_id"
                "   ORDER BY first_x DESC LIMIT 1) b)"
                " UPDATE matching_edge_block m SET xs = kept.xs, refs = kept.refs"
                " FROM hit CROSS JOIN LATERAL (SELECT array_agg(u.x ORDER BY u.i) AS xs,"
                "  array_agg(u.ref ORDER BY u.i) AS refs"
                "  FROM matching_edge_block b2 CROSS JOIN LATERAL"
                "  unnest(b2.xs, b2.refs) WITH ORDINALITY AS u(x, ref, i)"
                "  WHERE b2.segment = hit.segment AND b2.block = hit.block"
                "  AND u.ref >> 2 <> :k) kept"
                " WHERE m.segment = hit.segment AND m.block = hit.block"
            ),
            {"k": import_key},
        )
        connection.execute(text("DELETE FROM matching_edge_block WHERE xs IS NULL"))
        connection.execute(
            text("DELETE FROM matching_edge_run WHERE import_key = :k"), {"k": import_key}
        )

    def of_import(self) -> str:
        return (
            "(SELECT r.import_key, r.direction, u.x_id FROM matching_edge_run r"
            " CROSS JOIN LATERAL unnest(r.ids) AS u(x_id) WHERE r.import_key = :import_key)"
        )

    def pointing_at(self) -> str:
        x = "CAST(:x_id AS bigint)"
        return (
            f"(SELECT p.ref >> 2 AS import_key, p.ref & 3 AS direction, {x} AS x_id"
            " FROM matching_edge_segment s CROSS JOIN LATERAL"
            " (SELECT b.xs, b.refs FROM matching_edge_block b"
            f"  WHERE b.segment = s.segment AND b.first_x <= {x}"
            "  ORDER BY b.first_x DESC LIMIT 1) b"
            " CROSS JOIN LATERAL unnest(b.xs, b.refs) AS p(x, ref)"
            f" WHERE p.x = {x}"
            f" UNION ALL SELECT r.import_key, r.direction, {x} FROM matching_edge_run r"
            " WHERE r.import_key > (SELECT value FROM matching_sequence"
            "  WHERE name = 'compacted_import_key')"
            f" AND r.ids @> ARRAY[{x}])"
        )

    def fresh_after(self, connection: Connection) -> int:
        return int(
            connection.execute(
                text("SELECT value FROM matching_sequence WHERE name = 'compacted_import_key'")
            ).scalar_one()
        )

    def everything(self) -> str:
        return (
            "(SELECT r.import_key, r.direction, u.x_id FROM matching_edge_run r"
            " CROSS JOIN LATERAL unnest(r.ids) AS u(x_id))"
        )

    def count(self, connection: Connection) -> int:
        value = connection.execute(
            text("SELECT coalesce(sum(cardinality(ids)), 0) FROM matching_edge_run")
        ).scalar_one()
        return int(value)

    # --- compaction ------------------------------------------------------------------

    def compact(self, connection: Connection) -> int:
        """Index the runs loaded since the last compaction, up to
        ``SEGMENT_MAX_POSTINGS`` (more are left for the next call); merge segments.
        Returns how many postings were indexed (0: nothing to do)."""
        indexed = self._compact_once(connection)
        while self._merge_due(connection):
            pass
        return indexed

    def _compact_once(self, connection: Connection) -> int:
        raw: Any = connection.connection.dbapi_connection
        mark = self.fresh_after(connection)
        # Per slice: the parts of runs falling in it, and each part's ref and size
        # (the refs are expanded once per slice, not once per part).
        slices: dict[int, tuple[list[NDArray[np.int64]], list[int], list[int]]] = {
            s: ([], [], []) for s in _SLICES
        }
        bounds = np.array([s << _SLICE_SHIFT for s in _SLICES[1:]], dtype=np.int64)
        postings, last = 0, mark
        with raw.cursor(name="matching_fresh_runs") as cursor:
            cursor.itersize = 512
            cursor.execute(
                "SELECT import_key, direction, array_send(ids) FROM matching_edge_run"
                " WHERE import_key > %s ORDER BY import_key",
                (mark,),
            )
            for import_key, direction, data in cursor:
                if postings >= SEGMENT_MAX_POSTINGS and import_key != last:
                    break
                xs = _elements(data, _ELEMENTS)
                last = int(import_key)
                postings += int(xs.size)
                # Stored ids are sorted unsigned; sorted signed, they are two runs.
                xs = np.sort(xs)
                cuts = [0, *np.searchsorted(xs, bounds).tolist(), int(xs.size)]
                ref = int(import_key) * 4 + int(direction)
                for s, start, stop in zip(_SLICES, cuts, cuts[1:], strict=False):
                    if stop > start:
                        parts, refs, sizes = slices[s]
                        parts.append(xs[start:stop])
                        refs.append(ref)
                        sizes.append(stop - start)
        if last == mark:
            return 0
        if postings:
            segment = self._new_segment(connection)
            sink = PostingSink(raw, segment)
            for s in _SLICES:
                parts, refs, sizes = slices.pop(s)
                if parts:
                    sink.write(
                        np.concatenate(parts), np.repeat(np.array(refs, dtype=np.int32), sizes)
                    )
            self._sized(connection, segment, sink.postings)
        connection.execute(
            text("UPDATE matching_sequence SET value = :v WHERE name = 'compacted_import_key'"),
            {"v": last},
        )
        return postings

    def _new_segment(self, connection: Connection) -> int:
        return int(
            connection.execute(
                text(
                    "INSERT INTO matching_edge_segment (segment, postings)"
                    " SELECT coalesce(max(segment), 0) + 1, 0 FROM matching_edge_segment"
                    " RETURNING segment"
                )
            ).scalar_one()
        )

    def _sized(self, connection: Connection, segment: int, postings: int) -> None:
        connection.execute(
            text("UPDATE matching_edge_segment SET postings = :n WHERE segment = :s"),
            {"n": postings, "s": segment},
        )

    def _merge_due(self, connection: Connection) -> bool:
        """Merge the two newest segments when the newer is no longer much smaller."""
        rows = connection.execute(
            text("SELECT segment, postings FROM matching_edge_segment ORDER BY segment DESC")
        ).all()
        if len(rows) < 2:
            return False
        (newer, newer_size), (older, older_size) = rows[0], rows[1]
        if len(rows) <= MAX_SEGMENTS and newer_size < MERGE_RATIO * older_size:
            return False
        self._merge(connection, [int(older), int(newer)])
        return True

    def _merge(self, connection: Connection, segments: list[int]) -> None:
        """Rewrite segments as one, a slice at a time, dropping replaced imports."""
        raw: Any = connection.connection.dbapi_connection
        current = np.array(
            connection.execute(
                text("SELECT import_key FROM matching_person WHERE import_key IS NOT NULL")
            )
            .scalars()
            .all(),
            dtype=np.int32,
        )
        segment = self._new_segment(connection)
        sink = PostingSink(raw, segment)
        for s in _SLICES:
            lo, hi = s << _SLICE_SHIFT, (s + 1) << _SLICE_SHIFT
            query = (
                "SELECT array_send(xs), array_send(refs) FROM matching_edge_block"
                " WHERE segment = ANY(%s) AND first_x >= %s"
            )
            with raw.cursor() as reader:
                if s == _SLICES[-1]:  # the last slice's end is beyond bigint
                    reader.execute(query, (segments, lo))
                else:
                    reader.execute(query + " AND first_x < %s", (segments, lo, hi))
                rows = reader.fetchall()
            if not rows:
                continue
            xs = np.concatenate([_elements(r[0], _ELEMENTS) for r in rows])
            refs = np.concatenate([_elements(r[1], _ELEMENTS4) for r in rows])
            keep = np.isin(refs >> 2, current)
            if keep.any():
                sink.write(xs[keep], refs[keep])
        self._sized(connection, segment, sink.postings)
        connection.execute(
            text("DELETE FROM matching_edge_block WHERE segment = ANY(:s)"), {"s": segments}
        )
        connection.execute(
            text("DELETE FROM matching_edge_segment WHERE segment = ANY(:s)"), {"s": segments}
        )


# --- SQLite --------------------------------------------------------------------------


class SqliteRows:
    """One row per edge, a B-tree on the X id and one on the import."""

    def write(self, connection: Connection, import_key: int, batches: Iterable[EdgeBatch]) -> int:
        raw: Any = connection.connection.dbapi_connection
        cursor = raw.cursor()
        stored = 0
        try:
            for direction, ids in batches:
                if ids.size == 0:
                    continue
                values = array_to_db(ids).tolist()
                cursor.executemany(
                    "INSERT INTO matching_edge (import_key, direction, x_id) VALUES (?, ?, ?)",
                    [(import_key, direction, x) for x in values],
                )
                stored += len(values)
        finally:
            cursor.close()
        return stored

    def write_many(
        self, connection: Connection, imports: Sequence[tuple[int, Iterable[EdgeBatch]]]
    ) -> list[int]:
        return [self.write(connection, key, batches) for key, batches in imports]

    def delete(self, connection: Connection, import_key: int) -> None:
        connection.execute(
            text("DELETE FROM matching_edge WHERE import_key = :k"), {"k": import_key}
        )

    def of_import(self) -> str:
        return (
            "(SELECT import_key, direction, x_id FROM matching_edge WHERE import_key = :import_key)"
        )

    def pointing_at(self) -> str:
        return "(SELECT import_key, direction, x_id FROM matching_edge WHERE x_id = :x_id)"

    def fresh_after(self, connection: Connection) -> int:  # noqa: ARG002 - the protocol's
        return 0

    def everything(self) -> str:
        return "(SELECT import_key, direction, x_id FROM matching_edge)"

    def count(self, connection: Connection) -> int:
        return int(connection.execute(text("SELECT count(*) FROM matching_edge")).scalar_one())

    def compact(self, connection: Connection) -> int:  # noqa: ARG002 - the protocol's
        return 0  # the B-tree on the X id is kept up to date as edges arrive


def layout_for(dialect: str) -> EdgeLayout:
    """The edge layout of a database backend (``postgresql`` or ``sqlite``)."""
    if dialect == "postgresql":
        return PostgresRuns()
    if dialect == "sqlite":
        return SqliteRows()
    raise ValueError(f"unsupported database backend: {dialect}")
