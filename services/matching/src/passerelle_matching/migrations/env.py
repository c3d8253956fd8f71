"""Alembic environment for the matching service: see passerelle_platform.db."""

from alembic import context

from passerelle_matching.models import metadata
from passerelle_platform.db import run_migrations

run_migrations(context, metadata)
