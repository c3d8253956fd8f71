"""Alembic environment for the mastodon_sender service: see passerelle_platform.db."""

from alembic import context

from passerelle_mastodon_sender.models import metadata
from passerelle_platform.db import run_migrations

run_migrations(context, metadata)
