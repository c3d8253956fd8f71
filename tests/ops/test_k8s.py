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


#: Every kind that runs pods. The lockdown and secret checks below go through all of
#: them in every overlay, so a workload added later is checked without being named.
LONG_RUNNING_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"})
RUN_TO_COMPLETION_KINDS = frozenset({"Job", "CronJob"})
WORKLOAD_KINDS = LONG_RUNNING_KINDS | RUN_TO_COMPLETION_KINDS | {"Pod"}
#: Names that say "secret": such a variable never gets an inline value or a ConfigMap's.
SECRET_NAME = re.compile(r"SECRET|KEYS?$|PASSWORD|PASSWD|DATABASE_URL|TOKEN|CREDENTIAL")
#: A URL with credentials in it (scheme://user:password@host).
URL_WITH_CREDENTIALS = re.compile(r"[a-z][a-z0-9+.-]*://([^/@\s]+)@", re.IGNORECASE)
#: Long-running containers without probes, and why that is right.
WITHOUT_PROBES = {
    ("nats", "exporter"): "metrics sidecar: when it fails, its scrape does (up == 0)",
}


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    """The pod spec a workload of any kind runs."""
    if obj["kind"] == "Pod":
        spec: dict[str, Any] = obj["spec"]
    elif obj["kind"] == "CronJob":
        spec = obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    else:
        spec = obj["spec"]["template"]["spec"]
    return spec


def holds_containers(node: Any) -> bool:
    if isinstance(node, dict):
        return "containers" in node or any(holds_containers(v) for v in node.values())
    if isinstance(node, list):
        return any(holds_containers(v) for v in node)
    return False


def workloads(overlay: str) -> list[dict[str, Any]]:
    """Every object of the overlay that runs pods, whatever its kind."""
    found = [o for o in objects(overlay) if o["kind"] in WORKLOAD_KINDS]
    # A kind not listed above that still carries containers would escape every check.
    strays = [
        f"{o['kind']}/{o['metadata']['name']}"
        for o in objects(overlay)
        if o["kind"] not in WORKLOAD_KINDS and holds_containers(o.get("spec"))
    ]
    assert not strays, f"{overlay}: pods of a kind the checks do not know: {strays}"
    return found


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(obj)
    return [
        *spec.get("initContainers", []),
        *spec["containers"],
        *spec.get("ephemeralContainers", []),
    ]


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
        # Which Secrets each service reads (env and envFrom): test_secrets_come_from_secrets.
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


def expected_workloads(overlay: str) -> set[str]:
    """The workloads an overlay must at least have (so the checks below cannot pass on
    an empty rendering); any other workload is checked all the same."""
    base = {*SERVICES, "otel-collector", "nats"}
    return base | {"federation-hub"} if overlay == "hub" else base


def expected_secrets(overlay: str, workload: str) -> set[str]:
    """The Secrets each workload reads, as docs/operations.md lists them."""
    if workload in SERVICES:
        # A region's matching reaches its FEDERATION account (envFrom, leaf-remote).
        matching = {"passerelle-federation"} if overlay != "hub" else set()
        own = {"ingest": {"passerelle-ingest"}, "matching": matching}.get(
            workload, {f"passerelle-{workload}"}
        )
        return {f"pg-{workload}-app"} | own
    if workload == "nats":
        return (
            {"nats-leafnodes", "nats-leafnodes-tls"} if overlay == "hub" else {"nats-leaf-remote"}
        )
    if workload == "federation-hub":  # the FEDERATION account's administrator
        return {"nats-leafnodes"}
    return set()


def secret_mounts(obj: dict[str, Any], container: dict[str, Any]) -> list[str]:
    """Where the container sees Secrets as files."""
    secret_volumes = {
        v["name"] for v in pod_spec(obj).get("volumes", []) if "secret" in v or "projected" in v
    }
    return [
        m["mountPath"] for m in container.get("volumeMounts", []) if m["name"] in secret_volumes
    ]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_come_from_secrets(overlay: str) -> None:
    """In every workload of every kind: a secret-looking variable comes from a Secret
    (``secretKeyRef``), or names a file of a mounted Secret; never an inline value nor
    a ConfigMap, whether through ``env`` or through ``envFrom``. No ConfigMap a
    container loads whole holds a secret-looking key or a URL with credentials, and
    a URL with credentials is only ever assembled from variables read from Secrets.
    Each workload reads exactly the Secrets the operations guide lists."""
    configmaps = {o["metadata"]["name"]: o for o in objects(overlay) if o["kind"] == "ConfigMap"}
    names = {w["metadata"]["name"] for w in workloads(overlay)}
    assert expected_workloads(overlay) <= names, overlay
    for workload in workloads(overlay):
        name = workload["metadata"]["name"]
        read: set[str] = set()
        for container in containers(workload):
            where = f"{overlay}: {name}/{container['name']}"
            env = env_of(container)
            from_secrets = {
                var for var, e in env.items() if "secretKeyRef" in e.get("valueFrom", {})
            }
            read |= {env[var]["valueFrom"]["secretKeyRef"]["name"] for var in from_secrets}
            mounts = secret_mounts(workload, container)
            for var, entry in env.items():
                value = entry.get("value")
                if SECRET_NAME.search(var) and var not in from_secrets:
                    assert value is not None, f"{where}: {var} must come from a Secret"
                    assert any(value.startswith(m.rstrip("/") + "/") for m in mounts), (
                        f"{where}: {var} must come from a Secret, not an inline value"
                    )
                for userinfo in URL_WITH_CREDENTIALS.findall(value or ""):
                    parts = re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", userinfo)
                    bare = re.sub(r"\$\([A-Za-z_][A-Za-z0-9_]*\)|:", "", userinfo)
                    inline = f"{where}: {var} has credentials inline; build them from Secrets"
                    assert parts, inline
                    assert not bare, inline
                    assert set(parts) <= from_secrets, inline
            for source in container.get("envFrom", []):
                if "secretRef" in source:
                    read.add(source["secretRef"]["name"])
                    assert not source["secretRef"].get("optional"), f"{where}: required"
                    continue
                ref = source["configMapRef"]["name"]
                assert ref in configmaps, f"{where}: ConfigMap {ref} is not in the overlay"
                for key, value in configmaps[ref].get("data", {}).items():
                    var = source.get("prefix", "") + key
                    assert not SECRET_NAME.search(var), f"{where}: {var} from ConfigMap {ref}"
                    assert not URL_WITH_CREDENTIALS.search(value), f"{where}: {ref}/{key}"
        for volume in pod_spec(workload).get("volumes", []):
            if "secret" in volume:
                read.add(volume["secret"]["secretName"])
            for projected in volume.get("projected", {}).get("sources", []):
                if "secret" in projected:
                    read.add(projected["secret"]["name"])
        assert read == expected_secrets(overlay, name), (overlay, name)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_workload_is_locked_down_and_sized(overlay: str) -> None:
    """Every workload of every kind (Deployments, StatefulSets, Jobs and CronJobs'
    pod templates, ...), not a counted list: non-root, RuntimeDefault seccomp, no
    host namespaces, no service account token; each container with a read-only root
    filesystem, no privilege escalation, all capabilities dropped, CPU and memory
    requests and limits, a pinned image; long-running ones with readiness and
    liveness probes (exceptions named in WITHOUT_PROBES), run-to-completion ones
    bounded in time and never run twice at once."""
    found = workloads(overlay)
    assert expected_workloads(overlay) <= {w["metadata"]["name"] for w in found}, overlay
    for workload in found:
        kind, name = workload["kind"], workload["metadata"]["name"]
        pod = pod_spec(workload)
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"].get("runAsUser", 1) != 0, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert pod.get("automountServiceAccountToken") is False, f"{name}: no API token"
        for host in ("hostNetwork", "hostPID", "hostIPC"):
            assert not pod.get(host), f"{name}: {host}"
        for container in containers(workload):
            where = f"{overlay}: {kind} {name}/{container['name']}"
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            assert not security["capabilities"].get("add"), where
            assert not security.get("privileged"), where
            assert security.get("runAsNonRoot", True) is True, where
            assert security.get("runAsUser", 1) != 0, where
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), where
            assert ":" in container["image"], f"{where}: pin the image"
            assert not container["image"].endswith(":latest"), where
            probes = {p for p in ("readinessProbe", "livenessProbe") if p in container}
            if kind in RUN_TO_COMPLETION_KINDS:
                assert not probes, f"{where}: a job is done when it exits"
            elif (name, container["name"]) not in WITHOUT_PROBES and container in pod["containers"]:
                assert probes == {"readinessProbe", "livenessProbe"}, where
        if kind in RUN_TO_COMPLETION_KINDS:
            job = workload["spec"]["jobTemplate"]["spec"] if kind == "CronJob" else workload["spec"]
            assert pod["restartPolicy"] in {"Never", "OnFailure"}, name
            assert job["activeDeadlineSeconds"] > 0, f"{name}: a stuck run must end"
            assert job["backoffLimit"] <= 6, name
        if kind == "CronJob":
            assert workload["spec"]["concurrencyPolicy"] == "Forbid", f"{name}: one run at a time"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_federation_hub_cronjob(overlay: str) -> None:
    """The hub's federation job runs every two minutes (so an erased entry leaves the
    hub's disk within about two minutes, docs/operations.md) on the hub only, as the
    FEDERATION account's administrator, and the NATS NetworkPolicy admits it."""
    cronjobs = by_kind(overlay, "CronJob")
    if overlay != "hub":
        assert not cronjobs
        return
    cronjob = cronjobs["federation-hub"]
    assert cronjob["spec"]["schedule"] == "*/2 * * * *"
    (container,) = pod_spec(cronjob)["containers"]
    assert container["image"].startswith("passerelle/matching:")
    assert container["args"][0] == "hub"
    assert "--until-idle" in container["args"]
    env = env_of(container)
    assert env["HUB_NATS_URL"]["value"].endswith("@nats:4222")
    regions = configmap(overlay, "federation-hub")["regions"].split(",")
    assert sorted(regions) == sorted(o for o in OVERLAYS if o != "hub")
    members = configmap(overlay, "nats-config")["federation-members.conf"]
    for region in regions:  # each member region has its own leaf user, with a bcrypt hash
        assert re.search(rf'user: leaf-{region}\s+password: "\$2[aby]\$1[1-9]\$', members), (
            f"no bcrypt-hashed leaf user for {region}"
        )
    labels = cronjob["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    assert labels["passerelle.io/nats-client"] == "true"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_disruption_budgets_and_autoscalers(overlay: str) -> None:
    pdbs = by_kind(overlay, "PodDisruptionBudget")
    workloads = {**by_kind(overlay, "Deployment"), **by_kind(overlay, "StatefulSet")}
    for name, workload in workloads.items():
        assert pdbs[name]["spec"]["selector"] == workload["spec"]["selector"], name
    hpas = by_kind(overlay, "HorizontalPodAutoscaler")
    assert set(hpas) == {"matching", "bluesky-sender", "mastodon-sender"}
    for name, hpa in hpas.items():
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
        }
        assert "replicas" not in workloads[name]["spec"], f"{name}: the HPA owns replicas"
    # The senders lease accounts to one replica at a time: rollouts may overlap.
    for name in ("bluesky-sender", "mastodon-sender"):
        assert workloads[name]["spec"]["strategy"]["type"] == "RollingUpdate", name


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
    """Matching scales on its consumers' lag, the senders on their ledger's backlog and
    their intake's lag (as well as CPU); every external metric is one the Prometheus
    Adapter serves, narrowed to this service's own consumers or network."""
    from passerelle_contracts.streams import CONSUMERS
    from tests.ops.queries import adapter_rules

    served = adapter_rules()
    networks = {"bluesky-sender": "bluesky", "mastodon-sender": "mastodon"}
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
            secrets |= {(n, "") for n in re.findall(r'"secretRef": \{"name": "([^"]+)"\}', text)}
            if obj["kind"] == "ObjectStore":
                creds = obj["spec"]["configuration"]["s3Credentials"]
                secrets |= {(c["name"], c["key"]) for c in creds.values()}
        assert f"k8s/overlays/{overlay}" in guide
    for name, key in sorted(secrets):
        assert f"`{name}`" in guide, f"docs/operations.md does not name the Secret {name}"
        if key:
            assert f"`{key}`" in guide, f"docs/operations.md does not name key {key} of {name}"
    # Secrets loaded whole (envFrom): their keys are the variables the service reads.
    from passerelle_matching.federation import FederationSettings

    assert "federation_nats_url" in FederationSettings.model_fields
    assert FederationSettings.model_config.get("env_prefix") == "PASSERELLE_"
    assert "`PASSERELLE_FEDERATION_NATS_URL`" in guide


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
