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

from __future__ import annotations

import struct
from collections.abc import Iterable
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

    def delete(self, connection: Connection, import_key: int) -> None:
        """Forget an import's edges."""

    def of_import(self) -> str:
        """SQL relation ``(import_key, direction, x_id)`` of the import ``:import_key``."""

    def pointing_at(self) -> str:
        """SQL relation ``(import_key, direction, x_id)`` of the edges to ``:x_id`` (indexed)."""

    def everything(self) -> str:
        """SQL relation ``(import_key, direction, x_id)`` of all edges."""

    def count(self, connection: Connection) -> int:
        """How many edges are stored."""


# --- PostgreSQL ----------------------------------------------------------------------

_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
_COPY_TRAILER = struct.pack("!h", -1)
_INT8_OID = 20
_ELEMENTS = np.dtype([("length", ">i4"), ("value", ">i8")])


def copy_row(import_key: int, direction: int, part: int, ids: NDArray[np.int64]) -> bytes:
    """One ``matching_edge_run`` row in PostgreSQL's binary ``COPY`` format."""
    elements = np.empty(ids.size, dtype=_ELEMENTS)
    elements["length"] = 8
    elements["value"] = ids
    array = struct.pack("!iiiii", 1, 0, _INT8_OID, ids.size, 1) + elements.tobytes()
    fields = struct.pack("!hiiihiii", 4, 4, import_key, 2, direction, 4, part, len(array))
    return fields + array


class PostgresRuns:
    """Sorted ``bigint[]`` runs, one per decoded batch, GIN-indexed by X id."""

    def write(self, connection: Connection, import_key: int, batches: Iterable[EdgeBatch]) -> int:
        raw: Any = connection.connection.dbapi_connection
        stored = 0
        with (
            raw.cursor() as cursor,
            cursor.copy(
                "COPY matching_edge_run (import_key, direction, part, ids)"
                " FROM STDIN (FORMAT BINARY)"
            ) as copy,
        ):
            copy.write(_COPY_HEADER)
            for part, (direction, ids) in enumerate(batches):
                if ids.size == 0:
                    continue
                copy.write(copy_row(import_key, direction, part, array_to_db(ids)))
                stored += int(ids.size)
            copy.write(_COPY_TRAILER)
        return stored

    def delete(self, connection: Connection, import_key: int) -> None:
        connection.execute(
            text("DELETE FROM matching_edge_run WHERE import_key = :k"), {"k": import_key}
        )

    def of_import(self) -> str:
        return (
            "(SELECT r.import_key, r.direction, u.x_id FROM matching_edge_run r"
            " CROSS JOIN LATERAL unnest(r.ids) AS u(x_id) WHERE r.import_key = :import_key)"
        )

    def pointing_at(self) -> str:
        return (
            "(SELECT r.import_key, r.direction, CAST(:x_id AS bigint) AS x_id"
            " FROM matching_edge_run r WHERE r.ids @> ARRAY[CAST(:x_id AS bigint)])"
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

    def everything(self) -> str:
        return "(SELECT import_key, direction, x_id FROM matching_edge)"

    def count(self, connection: Connection) -> int:
        return int(connection.execute(text("SELECT count(*) FROM matching_edge")).scalar_one())


def layout_for(dialect: str) -> EdgeLayout:
    """The edge layout of a database backend (``postgresql`` or ``sqlite``)."""
    if dialect == "postgresql":
        return PostgresRuns()
    if dialect == "sqlite":
        return SqliteRows()
    raise ValueError(f"unsupported database backend: {dialect}")
