"""One request to the edge that crosses NATS is one trace, across processes."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.nats import NatsServer
from tests.support.services import ServiceProcess

pytestmark = pytest.mark.e2e


def spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_health_request_is_one_trace_from_http_to_matching(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    traces = {s: tmp_path / f"{s}.spans.jsonl" for s in ("ingest", "matching")}
    processes = [
        ServiceProcess(s, nats_server.url, tmp_path, {"PASSERELLE_TRACE_FILE": str(traces[s])})
        for s in traces
    ]
    for p in processes:
        p.start()
    try:
        for p in processes:
            p.wait_http("/readyz")
        edge = processes[0]
        response = httpx.get(edge.base_url + "/api/health", timeout=10)
        assert response.json()["services"]["matching"]["status"] == "up"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            matching_spans = [s for s in spans(traces["matching"]) if "health" in s["name"]]
            if matching_spans:
                break
            time.sleep(0.2)
    finally:
        for p in processes:
            p.stop()

    edge_spans = spans(traces["ingest"])
    roots = [s for s in edge_spans if s["parent_id"] is None and "/api/health" in s["name"]]
    assert len(roots) == 1, [s["name"] for s in roots]
    assert not [s for s in edge_spans if "/readyz" in s["name"]], "probes are not traced"
    trace_id = roots[0]["context"]["trace_id"]
    in_edge = {s["context"]["span_id"] for s in edge_spans if s["context"]["trace_id"] == trace_id}
    remote = [s for s in spans(traces["matching"]) if s["context"]["trace_id"] == trace_id]
    assert remote, "matching produced no span in the edge's trace"
    assert any(s["name"] == "rpc.health.matching process" for s in remote)
    # The matching span's parent is a span the edge made (the publish/request span).
    assert any(s["parent_id"] in in_edge for s in remote)
    assert all(s["resource"]["attributes"]["service.name"] == "passerelle-matching" for s in remote)
