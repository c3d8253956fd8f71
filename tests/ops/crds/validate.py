"""Validate custom resources against their vendored schemas (schemas.json), strictly.

Run with a Python that has jsonschema (var/ops-tools): reads a JSON list of
Kubernetes objects on stdin, prints a JSON object ``{"checked": [...],
"unchecked": [...], "errors": [...]}``. Strict: an object schema that lists its
properties rejects any other (as ``kubernetes-validate --strict`` does for the
built-in kinds), unless it says it keeps unknown fields.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import jsonschema

SCHEMAS = Path(__file__).with_name("schemas.json")


def strict(schema: Any) -> Any:
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def main() -> None:
    schemas = json.loads(SCHEMAS.read_text())
    report: dict[str, list[str]] = {"checked": [], "unchecked": [], "errors": []}
    for obj in json.load(sys.stdin):
        key = f"{obj['apiVersion']}/{obj['kind']}"
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if key not in schemas:
            report["unchecked"].append(name)
            continue
        validator = jsonschema.Draft7Validator(strict(schemas[key]["schema"]))
        errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
        for error in errors:
            path = ".".join(str(p) for p in error.absolute_path)
            report["errors"].append(f"{name}: {path}: {error.message}")
        report["checked"].append(name)
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
