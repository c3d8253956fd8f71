"""The bluesky sender service's tables (its own database; nobody else reads it)."""

from sqlmodel import SQLModel

metadata = SQLModel.metadata
