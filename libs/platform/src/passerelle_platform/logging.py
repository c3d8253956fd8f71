"""Structured logging that cannot print secrets.

Every record (ours and libraries', through the stdlib bridge) passes the
:class:`Redactor`: values under secret-looking keys are masked, ``SecretStr``
stays masked, and any known secret value is cut out of free text.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any

import structlog
from pydantic import SecretStr

MASK = "[redacted]"
SECRET_KEY_PATTERN = re.compile(
    r"pass(word)?|secret|token|authorization|cookie|api[_-]?key|credential|session|app_password",
    re.IGNORECASE,
)


class Redactor:
    """A structlog processor that masks secrets wherever they appear."""

    def __init__(self) -> None:
        self._known: set[str] = set()

    def remember(self, secrets: Iterable[SecretStr | str | None]) -> None:
        """Register secret values to cut out of any log text."""
        for secret in secrets:
            raw = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
            if raw and len(raw) >= 6:
                self._known.add(raw)

    def scrub(self, value: Any) -> Any:
        """``value`` with secrets masked (recursively for containers)."""
        if isinstance(value, SecretStr):
            return MASK
        if isinstance(value, str):
            for secret in self._known:
                if secret in value:
                    value = value.replace(secret, MASK)
            return value
        if isinstance(value, dict):
            return {k: MASK if _secret_key(k) else self.scrub(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.scrub(v) for v in value)
        return value

    def __call__(
        self, _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key in list(event_dict):
            event_dict[key] = MASK if _secret_key(key) else self.scrub(event_dict[key])
        return event_dict


def _secret_key(key: object) -> bool:
    return isinstance(key, str) and bool(SECRET_KEY_PATTERN.search(key))


REDACTOR = Redactor()


def configure_logging(
    service: str, region: str, level: str = "INFO", fmt: str = "json"
) -> structlog.stdlib.BoundLogger:
    """Route structlog and stdlib logging through one redacting pipeline to stderr."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        REDACTOR,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    structlog.contextvars.bind_contextvars(service=service, region=region)
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(service)
    return logger


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A logger for a module; configured by :func:`configure_logging`."""
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
