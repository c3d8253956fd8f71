"""Bluesky sender: linked accounts, rate budgets and the follow ledger."""

__version__ = "0.1.0"
