"""The Kubernetes manifests: every overlay renders, passes strict schema validation
for Kubernetes 1.30 (custom resources against their projects' published schemas),
and keeps the promises docs/operations.md makes."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import pytest

from tests.ops.tools import OVERLAYS, ROOT, objects, ops_python, rendered, require, run

KUBERNETES_VERSION = "1.30.0"
SERVICES = {  # deployment name -> (Python service name, HTTP port)
    "ingest": ("ingest", 8000),
    "matching": ("matching", 8101),
    "bluesky-sender": ("bluesky_sender", 8102),
    "mastodon-sender": ("mastodon_sender", 8103),
}
CORE_GROUPS = ("v1", "apps/", "policy/", "networking.k8s.io/", "autoscaling/", "batch/")


def by_kind(overlay: str, kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects(overlay) if o["kind"] == kind}


def configmap(overlay: str, prefix: str) -> dict[str, str]:
    """A generated ConfigMap's data (its name carries a content hash)."""
    found = [
        o for o in objects(overlay)
        if o["kind"] == "ConfigMap"
        and re.fullmatch(rf"{prefix}-[a-z0-9]{{10}}", o["metadata"]["name"])
    ]  # fmt: skip
    assert len(found) == 1, prefix
    data: dict[str, str] = found[0]["data"]
    return data


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_passes_kubernetes_validate_strict(overlay: str, tmp_path: Path) -> None:
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(rendered(overlay))
    out = run([require("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, str(path)])
    unchecked = sorted(
        set(re.findall(r"Couldn't find schema for kind (\w+) with api version (\S+)", out))
    )
    passed = re.findall(r"passed for resource", out)
    assert len(passed) >= 40, out
    # Kinds kubernetes-validate has no schema for are custom resources, checked below.
    for kind, api_version in unchecked:
        assert not api_version.startswith(CORE_GROUPS) or "." in api_version.split("/")[0], kind


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_custom_resources_match_their_published_schemas(overlay: str) -> None:
    custom = [o for o in objects(overlay) if not o["apiVersion"].startswith(CORE_GROUPS)]
    assert {o["kind"] for o in custom} == {
        "Cluster", "ScheduledBackup", "ObjectStore", "PodMonitor", "PrometheusRule",
    }  # fmt: skip
    report = json.loads(
        run(
            [ops_python(), str(ROOT / "tests" / "ops" / "crds" / "validate.py")],
            input_text=json.dumps(custom),
        )
    )
    assert report["errors"] == []
    if report["unchecked"]:  # no published schema vendored for these: say so
        warnings.warn(f"{overlay}: not schema-checked: {report['unchecked']}", stacklevel=1)
    assert len(report["checked"]) + len(report["unchecked"]) == len(custom)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_is_committed(overlay: str) -> None:
    assert not [o for o in objects(overlay) if o["kind"] == "Secret"]
    text = rendered(overlay)
    assert "PASSERELLE_SECRET_KEY=" not in text
    assert "PASSERELLE_ENCRYPTION_KEYS=" not in text


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_run_as_the_docs_say(overlay: str) -> None:
    deployments = by_kind(overlay, "Deployment")
    for name, (service, port) in SERVICES.items():
        deployment = deployments[name]
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["image"].startswith(f"passerelle/{name}:")
        assert container["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert {m["mountPath"] for m in container["volumeMounts"]} == {"/tmp"}
        env = env_of(container)
        assert env["PASSERELLE_HTTP_PORT"]["value"] == str(port)
        database = env["PASSERELLE_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
        assert database == {"name": f"pg-{name}-app", "key": "uri"}
        for var, entry in env.items():
            if re.search(r"SECRET|KEYS?$|PASSWORD|DATABASE_URL|TOKEN", var):
                assert "value" not in entry, f"{name}: {var} must come from a Secret"
        secrets = {
            v["valueFrom"]["secretKeyRef"]["name"]
            for v in env.values()
            if "secretKeyRef" in v.get("valueFrom", {})
        }
        expected = {"ingest": {"passerelle-ingest"}, "matching": set()}.get(
            name, {f"passerelle-{name}"}
        )
        assert secrets == {f"pg-{name}-app"} | expected, name
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert labels["passerelle.io/service"] == service
        assert labels["passerelle.io/region"] == overlay

    config = configmap(overlay, "passerelle-config")
    assert config["PASSERELLE_ENV"] == "production"
    assert config["PASSERELLE_HTTP_HOST"] == "0.0.0.0"
    assert config["PASSERELLE_REGION"] == overlay
    assert config["PASSERELLE_DEFAULT_LANGUAGE"] == {"hub": "en"}.get(overlay, overlay)
    assert config["PASSERELLE_NATS_URL"] == "nats://nats:4222"
    assert config["PASSERELLE_PUBLIC_URL"].startswith("https://")
    assert re.fullmatch(r"[a-z][a-z0-9-]{0,31}", config["PASSERELLE_REGION"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_locked_down_and_sized(overlay: str) -> None:
    workloads = [o for o in objects(overlay) if o["kind"] in {"Deployment", "StatefulSet"}]
    assert len(workloads) == 6  # four services, the collector, NATS
    for workload in workloads:
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for container in containers(workload):
            where = f"{workload['metadata']['name']}/{container['name']}"
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), where
            assert ":" in container["image"], f"{where}: pin the image"
            assert not container["image"].endswith(":latest"), where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_disruption_budgets_and_autoscalers(overlay: str) -> None:
    pdbs = by_kind(overlay, "PodDisruptionBudget")
    workloads = {**by_kind(overlay, "Deployment"), **by_kind(overlay, "StatefulSet")}
    for name, workload in workloads.items():
        assert pdbs[name]["spec"]["selector"] == workload["spec"]["selector"], name
    hpas = by_kind(overlay, "HorizontalPodAutoscaler")
    assert set(hpas) == {"matching", "bluesky-sender"}
    for name, hpa in hpas.items():
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
        }
        assert "replicas" not in workloads[name]["spec"], f"{name}: the HPA owns replicas"
    # The Mastodon sender does not lease accounts yet (docs/mastodon-sender.md): one
    # replica, and never two during a rollout.
    mastodon = workloads["mastodon-sender"]["spec"]
    assert mastodon["replicas"] == 1
    assert mastodon["strategy"] == {"type": "Recreate"}


def external_selector(metric: dict[str, Any]) -> tuple[str, set[str]]:
    """The one label an external metric's selector narrows, and its values."""
    selector = metric["selector"]
    if "matchLabels" in selector:
        ((label, value),) = selector["matchLabels"].items()
        return label, {value}
    ((expression,),) = (selector["matchExpressions"],)
    assert expression["operator"] == "In"
    return expression["key"], set(expression["values"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscalers_scale_on_queue_depth(overlay: str) -> None:
    """Matching scales on its consumers' lag, the Bluesky sender on its ledger's backlog
    and its intake's lag (as well as CPU); every external metric is one the Prometheus
    Adapter serves, narrowed to this service's own consumers or network."""
    from passerelle_contracts.streams import CONSUMERS
    from tests.ops.queries import adapter_rules

    served = adapter_rules()
    networks = {"bluesky-sender": "bluesky"}
    for name, hpa in by_kind(overlay, "HorizontalPodAutoscaler").items():
        service = SERVICES[name][0]
        metrics = hpa["spec"]["metrics"]
        kinds = {m["type"] for m in metrics}
        assert kinds == {"External", "Resource"}, name
        external = {
            m["external"]["metric"]["name"]: m["external"]
            for m in metrics
            if m["type"] == "External"
        }
        assert set(external) <= set(served), name
        for metric_name, metric in external.items():
            assert metric["target"]["type"] == "AverageValue", (name, metric_name)
            label, values = external_selector(metric["metric"])
            if metric_name == "passerelle_consumer_pending":
                assert label == "consumer_name"
                mine = {c.durable for c in CONSUMERS if c.service == service}
                wanted = mine if name == "matching" else {c for c in mine if "follows" in c}
                assert values == wanted, (name, values)
            else:
                assert (label, values) == ("network", {networks[name]}), name
        assert "passerelle_consumer_pending" in external, name
        if name in networks:
            assert "passerelle_follow_backlog" in external, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_nats_is_a_three_node_jetstream_cluster(overlay: str) -> None:
    nats = by_kind(overlay, "StatefulSet")["nats"]
    assert nats["spec"]["replicas"] == 3
    assert nats["spec"]["serviceName"] == "nats-headless"
    assert nats["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    server, exporter = nats["spec"]["template"]["spec"]["containers"]
    assert {p["name"]: p["containerPort"] for p in server["ports"]} == {
        "client": 4222, "cluster": 6222, "monitor": 8222, "leafnodes": 7422,
    }  # fmt: skip
    assert "http://localhost:8222" in exporter["args"]
    assert by_kind(overlay, "Service")["nats-headless"]["spec"]["clusterIP"] == "None"
    conf = configmap(overlay, "nats-config")
    routes = re.findall(r"nats://(nats-\d)\.nats-headless:6222", conf["nats.conf"])
    assert routes == ["nats-0", "nats-1", "nats-2"]
    env = configmap(overlay, "nats-env")
    assert env["NATS_JETSTREAM_DOMAIN"] == overlay
    assert env["NATS_CLUSTER_NAME"] == f"passerelle-{overlay}"
    leaf = conf["leafnodes.conf"]
    server_env = env_of(server)
    if overlay == "hub":
        assert "listen: 0.0.0.0:7422" in leaf
        assert by_kind(overlay, "Service")["nats-leafnodes"]["spec"]["type"] == "LoadBalancer"
        assert "cert_file: $NATS_LEAF_TLS_CERT" in leaf, "leaf links are TLS only"
        volumes = nats["spec"]["template"]["spec"]["volumes"]
        assert {"name": "leafnodes-tls", "secret": {"secretName": "nats-leafnodes-tls"}} in volumes
        assert (
            server_env["NATS_LEAF_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"]
            == "nats-leafnodes"
        )
    else:
        assert "remotes" in leaf
        assert "$NATS_LEAF_REMOTE_URL" in leaf
        assert (
            server_env["NATS_LEAF_REMOTE_URL"]["valueFrom"]["secretKeyRef"]["name"]
            == "nats-leaf-remote"
        )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_one_postgres_cluster_per_service_with_backups(overlay: str) -> None:
    clusters = by_kind(overlay, "Cluster")
    assert set(clusters) == {f"pg-{name}" for name in SERVICES}
    for name, (service, _) in SERVICES.items():
        spec = clusters[f"pg-{name}"]["spec"]
        assert spec["bootstrap"]["initdb"] == {"database": service, "owner": service}
        assert spec["instances"] >= 2
        assert spec["plugins"][0]["parameters"]["barmanObjectName"] == "passerelle-backups"
        assert spec["inheritedMetadata"]["labels"]["passerelle.io/region"] == overlay
    backups = by_kind(overlay, "ScheduledBackup")
    assert {b["spec"]["cluster"]["name"] for b in backups.values()} == set(clusters)
    store = by_kind(overlay, "ObjectStore")["passerelle-backups"]
    assert store["spec"]["configuration"]["destinationPath"].endswith(f"/{overlay}")


def _policies_for(overlay: str, labels: dict[str, str]) -> list[dict[str, Any]]:
    out = []
    for policy in by_kind(overlay, "NetworkPolicy").values():
        selector = policy["spec"]["podSelector"]
        match = selector.get("matchLabels", {})
        if all(labels.get(k) == v for k, v in match.items()) and not selector.get(
            "matchExpressions"
        ):
            out.append(policy)
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies(overlay: str) -> None:
    policies = by_kind(overlay, "NetworkPolicy")
    assert policies["default-deny-ingress"]["spec"] == {
        "podSelector": {},
        "policyTypes": ["Ingress"],
    }
    for name in SERVICES:
        spec = policies[name]["spec"]
        assert spec["policyTypes"] == ["Ingress", "Egress"]
        ports = {p["port"] for rule in spec["egress"] for p in rule.get("ports", [])}
        to_db = [
            peer["podSelector"]["matchLabels"]
            for rule in spec["egress"]
            for peer in rule.get("to", [])
            if "cnpg.io/cluster" in peer.get("podSelector", {}).get("matchLabels", {})
        ]
        assert to_db == [{"cnpg.io/cluster": f"pg-{name}"}], f"{name} reaches only its own database"
        assert {53, 4222, 5432, 4318} <= ports
        assert (443 in ports) == name.endswith("sender"), f"{name}: internet only for senders"
        # Only this service's policy selects its pods for egress.
        pod_labels = by_kind(overlay, "Deployment")[name]["spec"]["template"]["metadata"]["labels"]
        egress = [
            p for p in _policies_for(overlay, pod_labels) if "Egress" in p["spec"]["policyTypes"]
        ]
        assert [p["metadata"]["name"] for p in egress] == [name]
    for name in SERVICES:
        clients = policies[f"pg-{name}"]["spec"]["ingress"][0]["from"][0]["podSelector"][
            "matchLabels"
        ]
        assert clients == {"app.kubernetes.io/name": name}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_scrape_targets_match_the_pods(overlay: str) -> None:
    monitors = by_kind(overlay, "PodMonitor")
    services = monitors["passerelle-services"]["spec"]
    assert set(services["selector"]["matchExpressions"][0]["values"]) == set(SERVICES)
    assert services["podMetricsEndpoints"][0]["port"] == "http"
    assert services["podMetricsEndpoints"][0]["path"] == "/metrics"
    nats = by_kind(overlay, "StatefulSet")["nats"]["spec"]["template"]["spec"]["containers"][1]
    assert monitors["passerelle-nats"]["spec"]["podMetricsEndpoints"][0]["port"] in {
        p["name"] for p in nats["ports"]
    }


def test_dockerfile_ports_match_the_manifests() -> None:
    for name, (service, port) in SERVICES.items():
        dockerfile = (ROOT / "services" / service / "Dockerfile").read_text()
        assert f"EXPOSE {port}" in dockerfile
        assert f"PASSERELLE_HTTP_PORT={port}" in dockerfile
        settings = (
            ROOT / "services" / service / "src" / f"passerelle_{service}" / "settings.py"
        ).read_text()
        assert re.search(rf"http_port: int = {port}\b", settings), f"{name}: default port"


def test_operations_guide_names_every_secret_and_overlay() -> None:
    guide = (ROOT / "docs" / "operations.md").read_text()
    secrets = set()
    for overlay in OVERLAYS:
        for obj in objects(overlay):
            text = json.dumps(obj)
            secrets |= set(
                re.findall(r'"secretKeyRef": \{"name": "([^"]+)", "key": "([^"]+)"\}', text)
            )
            secrets |= {(n, "") for n in re.findall(r'"secretName": "([^"]+)"', text)}
            if obj["kind"] == "ObjectStore":
                creds = obj["spec"]["configuration"]["s3Credentials"]
                secrets |= {(c["name"], c["key"]) for c in creds.values()}
        assert f"k8s/overlays/{overlay}" in guide
    for name, key in sorted(secrets):
        assert f"`{name}`" in guide, f"docs/operations.md does not name the Secret {name}"
        if key:
            assert f"`{key}`" in guide, f"docs/operations.md does not name key {key} of {name}"


def test_operator_tools_pass_kubernetes_validate_strict() -> None:
    for path in sorted((ROOT / "k8s" / "tools").glob("*.yaml")):
        out = run([require("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, str(path)])
        assert "passed for resource" in out, path.name
    nats_policy = next(
        o for o in objects("fr") if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "nats"
    )
    admitted = [
        peer["podSelector"].get("matchLabels", {})
        for rule in nats_policy["spec"]["ingress"]
        for peer in rule.get("from", [])
        if "podSelector" in peer
    ]
    assert {"passerelle.io/nats-client": "true"} in admitted, "nats-box can reach NATS"
