"""The four services on a real nats-server, as Kubernetes runs them, checked from outside:

- every metric a dashboard, an alert rule or an autoscaler (through the Prometheus
  Adapter) reads is exported by a running service
  (or is one of the few that Prometheus, the NATS exporter or CloudNativePG export,
  listed in external_metrics.py);
- no metric label carries personal data;
- a real Prometheus scraping them answers the Prometheus Adapter's query for each
  sender's autoscaler in its namespace, and only there;
- traces go out over OTLP (as to the collector in k8s) and one request to the edge
  that asks the other services over NATS is one trace across the processes.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.otlp import OtlpCollector
from tests.ops.external_metrics import ALLOWED, NATS_VARZ_PREFIX
from tests.ops.promql import metric_names
from tests.ops.queries import (
    adapter_queries,
    adapter_query,
    adapter_rules,
    dashboard_queries,
    rule_queries,
)
from tests.ops.tools import require
from tests.support.nats import NatsServer
from tests.support.ports import free_port
from tests.support.services import SCRIPTS, ServiceProcess

pytestmark = pytest.mark.e2e

SECRET_KEY = "ops-test-session-key-4f1c9a7e2b"
ENCRYPTION_KEY = Fernet.generate_key().decode()


@dataclass
class Stack:
    nats: NatsServer
    collector: OtlpCollector
    services: dict[str, ServiceProcess]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("ops-stack")
    nats = NatsServer(work / "jetstream").start()
    collector = OtlpCollector()
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "PASSERELLE_SECRET_KEY": SECRET_KEY,
        "PASSERELLE_ENCRYPTION_KEYS": ENCRYPTION_KEY,
        "PASSERELLE_REGION": "fr",
        # The senders' backlog gauges, read by the autoscalers, refreshed each second.
        "PASSERELLE_BLUESKY_METRICS_INTERVAL_SECONDS": "1",
        "PASSERELLE_MASTODON_METRICS_INTERVAL_SECONDS": "1",
    }
    services = {s: ServiceProcess(s, nats.url, work, env) for s in SCRIPTS}
    try:
        for process in services.values():
            process.start()
        for process in services.values():
            process.wait_http("/readyz", timeout=90)
        yield Stack(nats, collector, services)
    finally:
        for process in services.values():
            process.stop()
        collector.stop()
        nats.stop()


def _health(stack: Stack) -> dict[str, Any]:
    response = httpx.get(stack.services["ingest"].base_url + "/api/health", timeout=10)
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def exported_names(text: str) -> set[str]:
    """Every series name an exposition can produce (families and their suffixes)."""
    names: set[str] = set()
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("_sum", "_count", "_created"),
        "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
        "info": ("_info",),
    }
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(family.name + s for s in suffixes.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


def varz_metric_names(nats: NatsServer) -> set[str]:
    """The gauges prometheus-nats-exporter makes from this server's /varz."""
    varz = httpx.get(f"http://127.0.0.1:{nats.monitor_port}/varz", timeout=5).json()

    def walk(node: dict[str, Any], prefix: str) -> Iterator[str]:
        for key, value in node.items():
            name = f"{prefix}_{key}" if prefix else key
            if isinstance(value, bool):
                continue
            if isinstance(value, int | float):
                yield name
            elif isinstance(value, dict):
                yield from walk(value, name)

    return {NATS_VARZ_PREFIX + name for name in walk(varz, "")}


def test_every_metric_in_dashboards_and_rules_is_exported(stack: Stack) -> None:
    _health(stack)  # one request across all services, so every family has samples
    exported: set[str] = set()
    for process in stack.services.values():
        exported |= exported_names(httpx.get(process.base_url + "/metrics", timeout=5).text)
    varz = varz_metric_names(stack.nats)
    used: dict[str, set[str]] = {}
    for where, expr in [*rule_queries(), *dashboard_queries(), *adapter_queries()]:
        for name in metric_names(expr):
            used.setdefault(name, set()).add(where)
    missing = {
        name: sorted(places)
        for name, places in used.items()
        if name not in exported and name not in ALLOWED and name not in varz
    }
    assert not missing, f"used but exported by nothing running: {missing}"
    assert {n for n in used if n.startswith("passerelle_")}, "dashboards read passerelle metrics"
    external = sorted(n for n in used if n not in exported)
    print(f"\nmetrics from outside the services (allow-listed): {external}")


def test_metric_labels_carry_no_personal_data(stack: Stack) -> None:
    _health(stack)
    for name, process in stack.services.items():
        text = httpx.get(process.base_url + "/metrics", timeout=5).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                for label, value in sample.labels.items():
                    if label in {"le", "quantile"}:
                        continue
                    where = f"{name}: {sample.name}{{{label}={value!r}}}"
                    assert len(value) <= 64, where
                    assert "@" not in value, where
                    assert "did:" not in value, where
                    assert not value.startswith(("http://", "https://")), where
                    digits = "".join(ch if ch.isdigit() else " " for ch in value).split()
                    assert not [d for d in digits if len(d) >= 6], f"id-like value: {where}"


def test_one_request_is_one_trace_over_otlp(stack: Stack) -> None:
    body = _health(stack)
    statuses = {name: service["status"] for name, service in body["services"].items()}
    assert {"matching", "bluesky_sender", "mastodon_sender"} <= set(statuses)
    assert set(statuses.values()) == {"up"}, statuses
    deadline = time.monotonic() + 20
    remote_services = {
        "passerelle-matching",
        "passerelle-bluesky-sender",
        "passerelle-mastodon-sender",
    }
    while True:
        with stack.collector.lock:
            spans = list(stack.collector.spans)
        roots = [
            s for s in spans
            if s.service == "passerelle-ingest" and not s.parent_id and "/api/health" in s.name
        ]  # fmt: skip
        if roots:
            trace = [s for s in spans if s.trace_id == roots[-1].trace_id]
            if remote_services <= {s.service for s in trace}:
                break
        assert time.monotonic() < deadline, (
            f"no complete trace: {[(s.service, s.name) for s in spans]}"
        )
        time.sleep(0.2)
    edge_span_ids = {s.span_id for s in trace if s.service == "passerelle-ingest"}
    for service in remote_services:
        theirs = [s for s in trace if s.service == service]
        # Each service's handling span is a child of a span the edge made (its request).
        assert any(s.parent_id in edge_span_ids for s in theirs), service
        assert all(s.parent_id for s in theirs), f"{service} started a new trace"
    for span in spans:
        text = " ".join([span.name, *span.attributes.values()])
        assert SECRET_KEY not in text, span.name
        assert ENCRYPTION_KEY not in text, span.name


def test_autoscaler_backlog_answers_for_its_namespace_only(stack: Stack, tmp_path: Path) -> None:
    """A real Prometheus scrapes the running services as the PodMonitor would (with the
    namespace label Kubernetes discovery adds); the query the Prometheus Adapter sends
    for each sender's HPA returns that sender's backlog in its namespace, and nothing
    for another namespace."""
    port = free_port()
    targets = [f"127.0.0.1:{p.port}" for p in stack.services.values()]
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "passerelle-services",
                "static_configs": [{"targets": targets, "labels": {"namespace": "passerelle-fr"}}],
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    log = (tmp_path / "prometheus.log").open("wb")
    prometheus = subprocess.Popen(
        [
            require("prometheus"),
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=log,
    )
    rule = adapter_rules()["passerelle_follow_backlog"]

    def answer(matchers: str) -> list[dict[str, Any]]:
        response = httpx.get(
            f"http://127.0.0.1:{port}/api/v1/query",
            params={"query": adapter_query(rule, matchers)},
            timeout=5,
        )
        response.raise_for_status()
        result: list[dict[str, Any]] = response.json()["data"]["result"]
        return result

    try:
        deadline = time.monotonic() + 90
        for network in ("bluesky", "mastodon"):
            matchers = f'namespace="passerelle-fr",network="{network}"'
            while True:
                assert prometheus.poll() is None, (tmp_path / "prometheus.log").read_text()
                try:
                    result = answer(matchers)
                except httpx.HTTPError:
                    result = []
                if result:
                    break
                assert time.monotonic() < deadline, f"no {network} backlog for the adapter"
                time.sleep(0.5)
            assert [r["metric"] for r in result] == [{"network": network}]
            assert float(result[0]["value"][1]) == 0.0  # nothing queued in this stack
            assert answer(f'namespace="passerelle-es",network="{network}"') == []
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=30)
        log.close()
