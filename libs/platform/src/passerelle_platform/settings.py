"""Settings shared by every service, from ``PASSERELLE_*`` environment variables.

Outside dev mode a service refuses to start when a secret is missing or still a
placeholder, and says which variable to set — one line, no traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Values that mean "nobody set this yet".
PLACEHOLDERS = frozenset({"", "change-me", "changeme", "secret", "placeholder", "dev", "xxx"})
DEV_PREFIX = "dev-only-"


class ConfigurationError(Exception):
    """The configuration cannot be used; the message names the variable to fix."""


class PlatformSettings(BaseSettings):
    """What every service needs: identity, NATS, storage, telemetry, secrets."""

    model_config = SettingsConfigDict(env_prefix="PASSERELLE_", extra="ignore")

    env: Literal["dev", "production"] = "production"
    """``dev`` allows built-in development secrets; anything else demands real ones."""
    region: str = Field(default="local", pattern=r"^[a-z][a-z0-9-]{0,31}$")
    nats_url: str = "nats://127.0.0.1:4222"
    data_dir: Path = Path("var")
    database_url: SecretStr | None = None
    """SQLAlchemy URL; unset means one SQLite file per service under ``data_dir``."""
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8100, ge=0, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"
    trace_file: Path | None = None
    """Write spans as JSON lines to this file (tests, debugging); OTLP is set by the
    standard ``OTEL_EXPORTER_OTLP_ENDPOINT``."""
    stream_replicas: int = Field(default=1, ge=1, le=5)
    """JetStream replicas per stream: 3 on a 3-node NATS cluster in production."""
    request_timeout_seconds: float = Field(default=2.0, gt=0)
    nats_connect_retry_seconds: float = Field(default=1.0, gt=0)

    def secret_fields(self) -> dict[str, SecretStr]:
        """Every configured secret, by field name (for checks and log redaction)."""
        out: dict[str, SecretStr] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                out[name] = value
            elif isinstance(value, list | tuple) and value and isinstance(value[0], SecretStr):
                for i, item in enumerate(value):
                    out[f"{name}[{i}]"] = item
        return out

    @model_validator(mode="after")
    def _refuse_placeholder_secrets(self) -> PlatformSettings:
        if self.env == "dev":
            return self
        for name in self.required_secrets():
            value = getattr(self, name)
            values = value if isinstance(value, list | tuple) else [value]
            if not values or any(_is_placeholder(v) for v in values):
                var = f"PASSERELLE_{name.upper()}"
                raise ValueError(
                    f"{var} is missing or a placeholder; set it to a real secret "
                    f"(or set PASSERELLE_ENV=dev for local development)"
                )
        return self

    @classmethod
    def required_secrets(cls) -> tuple[str, ...]:
        """Names of the fields that must hold a real secret outside dev mode."""
        return ()


def _is_placeholder(value: SecretStr | None) -> bool:
    if value is None:
        return True
    raw = value.get_secret_value().strip()
    return raw.lower() in PLACEHOLDERS or raw.startswith(DEV_PREFIX) or len(raw) < 16


S = TypeVar("S", bound=PlatformSettings)


def load_settings(cls: type[S]) -> S:
    """Read settings, or raise :class:`ConfigurationError` with a one-line reason."""
    try:
        return cls()
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        if where and not message.startswith("PASSERELLE_"):
            message = f"PASSERELLE_{where.upper()}: {message}"
        raise ConfigurationError(message) from None


def settings_or_exit(cls: type[S]) -> S:
    """:func:`load_settings` for a process entry point: exit 2 with one line on error."""
    try:
        return load_settings(cls)
    except ConfigurationError as error:
        sys.stderr.write(f"configuration error: {error}\n")
        raise SystemExit(2) from None
