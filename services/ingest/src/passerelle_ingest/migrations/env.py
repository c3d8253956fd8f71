"""Alembic environment for the ingest service: see passerelle_platform.db."""

from alembic import context

from passerelle_ingest.models import metadata
from passerelle_platform.db import run_migrations

run_migrations(context, metadata)
