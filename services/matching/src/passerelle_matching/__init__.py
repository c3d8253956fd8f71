"""Matching: the follow graph, the directory and the matches."""

__version__ = "0.1.0"
