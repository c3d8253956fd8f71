"""Configurable caps that protect the reader (and the ingest service) from hostile input."""

from __future__ import annotations

from dataclasses import dataclass, fields

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


@dataclass(frozen=True, slots=True)
class ArchiveLimits:
    """Limits enforced while reading; the ingest service maps its settings onto these.

    All size caps are enforced on the bytes actually read or inflated, while
    streaming; header values are only used to refuse early, never trusted.
    """

    max_archive_bytes: int = 16 * GiB
    """Size of the zip file (or sum of the uploaded extracted files)."""
    max_members: int = 500_000
    """Number of entries in the zip's central directory (media-heavy archives have many)."""
    max_inflated_bytes: int = 8 * GiB
    """Total inflated size of the members we read (account, follower*, following*)."""
    max_compression_ratio: float = 100.0
    """Inflated/compressed ratio per member; genuine follower lists deflate about 10×."""
    ratio_check_after_bytes: int = 1 * MiB
    """The ratio is only checked once a member has inflated this much (tiny files vary)."""
    max_account_bytes: int = 1 * MiB
    """Size of account.js (a few hundred bytes in genuine archives)."""
    max_edges: int = 25_000_000
    """Follow entries read, following plus followers, duplicates included."""
    max_ids_in_memory: int = 1 << 20
    """Ids buffered in memory per edge set before a sorted run is spilled to a temp file."""

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if value <= 0:
                raise ValueError(f"ArchiveLimits.{field.name} must be positive, got {value!r}")
        if self.max_ids_in_memory < 1024:
            raise ValueError("ArchiveLimits.max_ids_in_memory must be at least 1024")
