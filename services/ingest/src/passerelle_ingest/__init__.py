"""Ingest: the HTTP edge, people, consents and archive uploads."""

__version__ = "0.1.0"
