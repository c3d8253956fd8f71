"""Every PromQL query of the alert rules and the Grafana dashboards, with where it is."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.ops.tools import ROOT, yaml_documents

RULES = ROOT / "deploy" / "prometheus" / "rules" / "passerelle.rules.yml"
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"

#: Grafana's variables, replaced by something PromQL accepts (for syntax checks).
_GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1d",
    "${__range}": "1d",
    "$region": ".*",
    "${region}": ".*",
}


def dashboards() -> dict[Path, dict[str, Any]]:
    return {p: json.loads(p.read_text(encoding="utf-8")) for p in sorted(DASHBOARDS.glob("*.json"))}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # collapsed rows


def rule_queries() -> list[tuple[str, str]]:
    groups = yaml_documents(RULES.read_text(encoding="utf-8"))[0]["groups"]
    return [
        (f"{RULES.name}: {rule.get('alert') or rule.get('record')}", str(rule["expr"]))
        for group in groups
        for rule in group["rules"]
    ]


def dashboard_queries() -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for path, dashboard in dashboards().items():
        for panel in panels(dashboard):
            out.extend(
                (f"{path.name}: {panel['title']}", t["expr"]) for t in panel.get("targets", [])
            )
        for variable in dashboard.get("templating", {}).get("list", []):
            if variable.get("type") == "query":
                query = variable["query"]
                text = query["query"] if isinstance(query, dict) else query
                out.append((f"{path.name}: variable {variable['name']}", text))
    return out


def as_promql(expr: str) -> str:
    """A dashboard query with Grafana's variables replaced (for promtool)."""
    for variable, value in sorted(_GRAFANA_VARIABLES.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(variable, value)
    leftover = re.search(r"\$\{?\w+", expr)
    if leftover:
        raise AssertionError(f"unknown Grafana variable {leftover.group(0)} in: {expr}")
    return expr


ADAPTER = ROOT / "deploy" / "prometheus-adapter" / "values.yaml"


def adapter_rules() -> dict[str, dict[str, Any]]:
    """The Prometheus Adapter's external metrics, by the name the HPAs use."""
    values = yaml_documents(ADAPTER.read_text(encoding="utf-8"))[0]
    return {rule["name"]["as"]: rule for rule in values["rules"]["external"]}


def series_name(rule: dict[str, Any]) -> str:
    """The metric a rule's ``seriesQuery`` discovers (``name{labels}``)."""
    return str(rule["seriesQuery"]).split("{", 1)[0]


def adapter_query(rule: dict[str, Any], matchers: str = 'namespace="passerelle-fr"') -> str:
    """The PromQL the adapter sends for an HPA in a namespace (its Go template filled)."""
    return (
        str(rule["metricsQuery"])
        .replace("<<.Series>>", series_name(rule))
        .replace("<<.LabelMatchers>>", matchers)
    )


def adapter_queries() -> list[tuple[str, str]]:
    return [(f"{ADAPTER.name}: {name}", adapter_query(r)) for name, r in adapter_rules().items()]
