"""Alert rules, dashboards and the trace collector's configuration, checked by the
tools that will read them (promtool) and against each other."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.ops.promql import metric_names
from tests.ops.queries import (
    DASHBOARDS,
    RULES,
    adapter_queries,
    adapter_rules,
    as_promql,
    dashboard_queries,
    dashboards,
    panels,
    rule_queries,
)
from tests.ops.tools import ROOT, ops_python, require, run, yaml_documents


def test_rules_pass_promtool() -> None:
    out = run([require("promtool"), "check", "rules", str(RULES)])
    assert "SUCCESS" in out


def test_rules_fire_as_their_unit_tests_say() -> None:
    out = run([require("promtool"), "test", "rules", str(RULES.with_name("passerelle.test.yml"))])
    assert "SUCCESS" in out


def test_every_alert_has_severity_summary_and_runbook_text() -> None:
    groups = yaml_documents(RULES.read_text())[0]["groups"]
    alerts = [rule for group in groups for rule in group["rules"] if "alert" in rule]
    assert len({a["alert"] for a in alerts}) == len(alerts), "alert names are unique"
    for alert in alerts:
        assert alert["labels"]["severity"] in {"critical", "warning", "info"}, alert["alert"]
        assert alert["annotations"]["summary"], alert["alert"]
        assert alert["annotations"]["description"], alert["alert"]
    # The list: service down, backlog growing for 30 min, dead letters, DB errors.
    names = {a["alert"] for a in alerts}
    assert {
        "PasserelleServiceDown",
        "PasserelleBacklogGrowing",
        "PasserelleDeadLettersNew",
        "PasserelleDatabaseDown",
        "PasserelleDatabaseErrors",
    } <= names
    backlog = next(a for a in alerts if a["alert"] == "PasserelleBacklogGrowing")
    assert backlog["for"] == "30m"


def test_prometheus_rule_object_is_generated_from_the_rule_file() -> None:
    run([ops_python(), str(ROOT / "deploy" / "ops" / "generate.py"), "--check"])


def test_dashboards_are_well_formed() -> None:
    found = dashboards()
    assert {p.stem for p in found} >= {
        "passerelle-funnel",
        "passerelle-senders",
        "passerelle-nats",
        "passerelle-regions",
    }
    uids = [d["uid"] for d in found.values()]
    assert len(set(uids)) == len(uids)
    kustomization = (DASHBOARDS.parent / "kustomization.yaml").read_text()
    for path, dashboard in found.items():
        assert f"dashboards/{path.name}" in kustomization, f"{path.name} not in the ConfigMaps"
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["region"]["includeAll"] is True
        ids = [p["id"] for p in panels(dashboard)]
        assert len(set(ids)) == len(ids), f"{path.name}: duplicate panel ids"
        for panel in panels(dashboard):
            if panel["type"] in {"row", "text"}:
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["targets"], f"{path.name}: {panel['title']} has no query"
            for target in panel["targets"]:
                # Every query honours the region selector.
                assert 'region=~"$region"' in target["expr"], (path.name, panel["title"])


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses every dashboard query (as a recording rule)."""
    rules = [
        {"record": f"dashboard:query_{i}", "expr": as_promql(expr)}
        for i, (_, expr) in enumerate(dashboard_queries())
        if not expr.startswith("label_values(")
    ]
    path = tmp_path / "dashboards.rules.json"  # JSON is YAML
    path.write_text(json.dumps({"groups": [{"name": "dashboards", "rules": rules}]}))
    out = run([require("promtool"), "check", "rules", str(path)])
    assert f"{len(rules)} rules found" in out


def test_autoscaling_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses what the Prometheus Adapter sends for each external metric."""
    rules = adapter_rules()
    assert set(rules) == {"passerelle_consumer_pending", "passerelle_follow_backlog"}
    for name, rule in rules.items():
        # Namespaced: the adapter adds the HPA's namespace to <<.LabelMatchers>>.
        assert rule["resources"]["overrides"]["namespace"] == {"resource": "namespace"}, name
        assert "<<.LabelMatchers>>" in rule["metricsQuery"], name
    queries = [
        {"record": f"adapter:query_{i}", "expr": expr}
        for i, (_, expr) in enumerate(adapter_queries())
    ]
    queries += [
        {"record": f"adapter:series_{i}", "expr": rule["seriesQuery"]}
        for i, rule in enumerate(rules.values())
    ]
    path = tmp_path / "adapter.rules.json"
    path.write_text(json.dumps({"groups": [{"name": "adapter", "rules": queries}]}))
    out = run([require("promtool"), "check", "rules", str(path)])
    assert f"{len(queries)} rules found" in out


# --- the OpenTelemetry Collector ----------------------------------------------------------

#: Components of the core distribution, otel/opentelemetry-collector 0.159.0
#: (opentelemetry-collector-releases, distributions/otelcol/manifest.yaml).
CORE_COMPONENTS = {
    "receivers": {"otlp", "jaeger", "kafka", "opencensus", "prometheus", "zipkin",
                  "hostmetrics", "nop", "filelog"},
    "processors": {"batch", "memory_limiter", "attributes", "resource", "span",
                   "probabilistic_sampler", "filter"},
    "exporters": {"debug", "nop", "otlp_grpc", "otlp_http", "otlp", "otlphttp", "file",
                  "kafka", "prometheus", "prometheusremotewrite", "zipkin"},
    "extensions": {"zpages", "health_check", "pprof"},
}  # fmt: skip


def test_collector_config_is_consistent() -> None:
    config = yaml_documents((ROOT / "deploy" / "otel" / "collector.yaml").read_text())[0]
    for kind, allowed in CORE_COMPONENTS.items():
        for name in config.get(kind, {}):
            assert name.split("/")[0] in allowed, f"{kind} {name} is not in the core collector"
    service = config["service"]
    assert set(service["extensions"]) <= set(config["extensions"])
    for pipeline_name, pipeline in service["pipelines"].items():
        for kind in ("receivers", "processors", "exporters"):
            for name in pipeline.get(kind, []):
                assert name in config[kind], f"{pipeline_name} uses undefined {kind} {name}"
    traces = service["pipelines"]["traces"]
    assert traces["processors"][0] == "memory_limiter", "memory_limiter comes first"
    assert traces["processors"][-1] == "batch", "batch comes last"
    # Addresses, raw URLs and headers never leave the node.
    scrubbed = {a["key"] for a in config["processors"]["attributes/scrub"]["actions"]}
    assert {"client.address", "url.query", "http.url", "http.request.header.cookie"} <= scrubbed
    # The services' OTLP/HTTP endpoint in k8s is this collector's HTTP receiver.
    assert config["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")


@pytest.mark.parametrize("overlay", ["hub", "fr", "es"])
def test_services_export_traces_to_the_collector(overlay: str) -> None:
    from tests.ops.tools import objects

    by_kind = {(o["kind"], o["metadata"]["name"].rsplit("-", 1)[0]): o for o in objects(overlay)}
    config = by_kind[("ConfigMap", "passerelle-config")]["data"]
    assert config["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318"
    collector = next(
        o
        for o in objects(overlay)
        if o["kind"] == "Service" and o["metadata"]["name"] == "otel-collector"
    )
    assert 4318 in [p["port"] for p in collector["spec"]["ports"]]


def test_alert_links_point_at_sections_of_the_guide() -> None:
    guide = (ROOT / "docs" / "operations.md").read_text()
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in guide.splitlines()
        if line.startswith("#")
    }
    links = set(re.findall(r"docs/operations\.md#([a-z0-9-]+)", RULES.read_text()))
    assert links, "the rules link to their runbooks"
    assert links <= anchors, links - anchors
    groups = yaml_documents(RULES.read_text())[0]["groups"]
    for alert in (r["alert"] for g in groups for r in g["rules"] if "alert" in r):
        assert f"`{alert}`" in guide, f"docs/operations.md does not explain {alert}"


def metrics_section() -> tuple[set[str], set[str]]:
    """The ``passerelle_*`` names docs/operations.md's *Metrics* section says are
    exported, and those a *Not exported yet* table in it plans (if it has one)."""
    guide = (ROOT / "docs" / "operations.md").read_text()
    section = guide.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    exported, _, planned = section.partition("**Not exported yet**")
    names = re.compile(r"`(passerelle_[a-z0-9_]+)")
    return set(names.findall(exported)), set(names.findall(planned))


def defined_metric_names() -> set[str]:
    """Every ``passerelle_*`` name a service or library passes to prometheus_client."""
    sources = [*ROOT.glob("services/*/src/**/*.py"), *ROOT.glob("libs/*/src/**/*.py")]
    found: set[str] = set()
    for path in sources:
        found |= set(re.findall(r'"(passerelle_[a-z0-9_]+)"', path.read_text()))
    return found


def test_the_guide_says_honestly_what_is_exported() -> None:
    """What the guide lists as exported is defined in the code; what it lists as not
    exported yet is not, is on no dashboard or rule, and the funnel says so. When a
    planned metric lands, this fails until the guide and the funnel show it."""
    exported, planned = metrics_section()
    defined = defined_metric_names()
    assert len(exported) > 20, "the guide's list of exported metrics was not found"
    assert not exported - defined, f"the guide lists metrics nothing defines: {exported - defined}"
    landed = planned & defined
    assert not landed, (
        f"{sorted(landed)} are exported now: move them out of 'Not exported yet' in "
        "docs/operations.md, put them on the funnel and drop them from its text panel"
    )
    used = {n for _, expr in [*dashboard_queries(), *rule_queries()] for n in metric_names(expr)}
    assert not planned & used, "a dashboard or rule reads a metric nothing exports"
    funnel = json.loads((DASHBOARDS / "passerelle-funnel.json").read_text())
    notes = " ".join(p["options"]["content"] for p in panels(funnel) if p.get("type") == "text")
    for name in planned:
        assert name in notes, f"the funnel's 'Not exported yet' panel does not name {name}"
