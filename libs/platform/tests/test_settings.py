"""Settings refuse placeholder secrets outside dev mode; logs never print secrets."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import structlog
from pydantic import SecretStr

from passerelle_platform.logging import MASK, REDACTOR, configure_logging
from passerelle_platform.settings import (
    DEV_PREFIX,
    ConfigurationError,
    PlatformSettings,
    load_settings,
)

BIN = Path(sys.executable).parent


class _WithSecret(PlatformSettings):
    api_secret: SecretStr = SecretStr(DEV_PREFIX + "x")

    @classmethod
    def required_secrets(cls) -> tuple[str, ...]:
        return ("api_secret",)


def test_dev_mode_accepts_the_built_in_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PASSERELLE_ENV", "dev")
    assert load_settings(_WithSecret).api_secret.get_secret_value().startswith(DEV_PREFIX)


@pytest.mark.parametrize("value", [None, "", "change-me", DEV_PREFIX + "whatever-long", "short"])
def test_production_refuses_missing_or_placeholder(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    monkeypatch.setenv("PASSERELLE_ENV", "production")
    if value is None:
        monkeypatch.delenv("PASSERELLE_API_SECRET", raising=False)
    else:
        monkeypatch.setenv("PASSERELLE_API_SECRET", value)
    with pytest.raises(ConfigurationError, match="PASSERELLE_API_SECRET"):
        load_settings(_WithSecret)


def test_production_accepts_a_real_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PASSERELLE_ENV", "production")
    monkeypatch.setenv("PASSERELLE_API_SECRET", "k8s-provided-0123456789abcdef")
    assert load_settings(_WithSecret).env == "production"


def test_wrong_types_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PASSERELLE_ENV", "dev")
    monkeypatch.setenv("PASSERELLE_HTTP_PORT", "eighty")
    with pytest.raises(ConfigurationError, match="PASSERELLE_HTTP_PORT"):
        load_settings(PlatformSettings)


@pytest.mark.parametrize(
    ("script", "variable"),
    [
        ("passerelle-ingest", "PASSERELLE_SECRET_KEY"),
        ("passerelle-bluesky-sender", "PASSERELLE_ENCRYPTION_KEYS"),
        ("passerelle-mastodon-sender", "PASSERELLE_ENCRYPTION_KEYS"),
    ],
)
def test_service_refuses_to_start_with_one_line(script: str, variable: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PASSERELLE_")}
    env |= {"PASSERELLE_ENV": "production", "PASSERELLE_DATA_DIR": str(tmp_path)}
    done = subprocess.run(
        [str(BIN / script)], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert variable in lines[0]
    assert "Traceback" not in done.stderr


def test_logs_never_print_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    secret = "hunter2-very-secret-value"
    REDACTOR.remember([SecretStr(secret)])
    configure_logging("test", "fr", "INFO", "json")
    log = structlog.get_logger("t")
    log.info("login", app_password=secret, note=f"failed with {secret}")
    log.info("nested", payload={"token": secret, "ok": "visible"}, value=SecretStr(secret))
    logging.getLogger("some.library").warning("library said %s", secret)
    err = capsys.readouterr().err
    assert secret not in err
    records = [json.loads(line) for line in err.strip().splitlines()]
    assert records[0]["app_password"] == MASK
    assert MASK in records[0]["note"]
    assert records[1]["payload"] == {"token": MASK, "ok": "visible"}
    assert records[1]["value"] == MASK
    assert MASK in records[2]["event"]
