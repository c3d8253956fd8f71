"""Mastodon sender: OAuth links per instance, budgets and the follow ledger."""

__version__ = "0.1.0"
