"""Vendor the published schemas of the custom resources passerelle's manifests use.

The schemas are the ``openAPIV3Schema`` of each project's own CRD at a release tag,
without descriptions (size), in ``schemas.json``. To refresh, fetch the CRD files of
the versions in SOURCES and run, with any Python that has PyYAML::

    python tests/ops/crds/vendor.py CRD.yaml [CRD.yaml ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

SOURCES = {
    "postgresql.cnpg.io/v1": "cloudnative-pg/cloudnative-pg v1.30.0 config/crd/bases/",
    "barmancloud.cnpg.io/v1": "cloudnative-pg/plugin-barman-cloud v0.14.0 config/crd/bases/",
    "monitoring.coreos.com/v1": (
        "prometheus-operator/prometheus-operator v0.93.0 example/prometheus-operator-crd/"
    ),
}
OUT = Path(__file__).with_name("schemas.json")


def _strip(node: Any) -> Any:
    if isinstance(node, dict):
        # A "description" string annotates a schema; a "description" object is a property.
        return {
            k: _strip(v) for k, v in node.items() if not (k == "description" and isinstance(v, str))
        }
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def main(paths: list[str]) -> None:
    schemas: dict[str, Any] = json.loads(OUT.read_text()) if OUT.exists() else {}
    for path in paths:
        crd = yaml.safe_load(Path(path).read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            key = f"{group}/{version['name']}/{kind}"
            schemas[key] = {
                "source": SOURCES.get(f"{group}/{version['name']}", "unknown"),
                "schema": _strip(version["schema"]["openAPIV3Schema"]),
            }
    OUT.write_text(json.dumps(schemas, sort_keys=True, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
