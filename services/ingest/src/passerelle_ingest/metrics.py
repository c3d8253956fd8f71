"""The edge's own metrics (on the runtime's registry; no personal data in labels)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class IngestMetrics:
    """Archives imported and rejected, edges ingested."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.archives_imported = Counter(
            "passerelle_archives_imported_total",
            "Archives imported, by upload kind (zip, files) and outcome (published, duplicate).",
            ["upload", "outcome"],
            registry=registry,
        )
        self.archives_rejected = Counter(
            "passerelle_archives_rejected_total",
            "Uploads refused, by reason (the archive error code, or too_large, unavailable).",
            ["reason"],
            registry=registry,
        )
        self.edges_ingested = Counter(
            "passerelle_edges_ingested_total",
            "Follow edges handed to matching, after de-duplication, by direction.",
            ["direction"],
            registry=registry,
        )
        for reason in ("unavailable",):
            self.archives_rejected.labels(reason)
        for direction in ("following", "follower"):
            self.edges_ingested.labels(direction)
