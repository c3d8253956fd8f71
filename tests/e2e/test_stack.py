"""The four services as real processes on a real nats-server, seen from the edge."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.nats import NatsServer
from tests.support.services import SCRIPTS, STARTUP_SECONDS, ServiceProcess

pytestmark = pytest.mark.e2e


def health(edge: ServiceProcess) -> dict[str, Any]:
    response = httpx.get(edge.base_url + "/api/health", timeout=10)
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.25)
    raise AssertionError(f"{what} not reached in {timeout}s (last: {last})")


@pytest.fixture
def stack(nats_server: NatsServer, tmp_path: Path) -> Iterator[dict[str, ServiceProcess]]:
    processes = {s: ServiceProcess(s, nats_server.url, tmp_path) for s in SCRIPTS}
    for p in processes.values():
        p.start()
    try:
        yield processes
    finally:
        for p in processes.values():
            p.stop()


def statuses(edge: ServiceProcess) -> dict[str, str]:
    return {name: s["status"] for name, s in health(edge)["services"].items()}


def test_health_up_down_and_back_after_a_nats_restart(
    stack: dict[str, ServiceProcess], nats_server: NatsServer
) -> None:
    edge = stack["ingest"]
    edge.wait_http("/healthz")
    all_up = dict.fromkeys(SCRIPTS, "up")
    wait_for(lambda: statuses(edge) == all_up, STARTUP_SECONDS, "all four services up")
    body = health(edge)
    assert body["status"] == "up"
    for name, status in body["services"].items():
        assert status["version"] == "0.1.0"
        assert status["region"] == "local", name

    # The home page tells a person the same.
    page = httpx.get(edge.base_url + "/", timeout=10).text
    for name in SCRIPTS:
        assert f'<tr data-service="{name}" data-status="up">' in page

    stack["matching"].stop()
    wait_for(lambda: statuses(edge)["matching"] == "down", 15, "matching down")
    assert health(edge)["status"] == "degraded"
    assert statuses(edge)["bluesky_sender"] == "up"

    stack["matching"].start()
    wait_for(lambda: statuses(edge) == all_up, STARTUP_SECONDS, "matching back up")

    nats_server.restart(pause=2.0)
    wait_for(lambda: statuses(edge) == all_up, STARTUP_SECONDS, "all up after NATS restart")
    for p in stack.values():
        assert httpx.get(p.base_url + "/readyz", timeout=5).status_code == 200


def test_services_start_before_nats(nats_server: NatsServer, tmp_path: Path) -> None:
    nats_server.stop()
    edge = ServiceProcess("ingest", nats_server.url, tmp_path).start()
    matching = ServiceProcess("matching", nats_server.url, tmp_path).start()
    try:
        edge.wait_http("/healthz")
        assert httpx.get(edge.base_url + "/readyz", timeout=5).status_code == 503
        assert health(edge)["services"]["matching"]["error"] == "edge_not_connected"
        nats_server.start()
        wait_for(
            lambda: statuses(edge)["matching"] == "up",
            STARTUP_SECONDS,
            "matching up once NATS exists",
        )
        edge.wait_http("/readyz")
    finally:
        edge.stop()
        matching.stop()


def test_metrics_are_exported(stack: dict[str, ServiceProcess]) -> None:
    for p in stack.values():
        p.wait_http("/readyz")
        text = httpx.get(p.base_url + "/metrics", timeout=5).text
        assert "passerelle_service_info{" in text
        assert "passerelle_nats_connected 1.0" in text
