"""JSON Schemas of every message, written to ``docs/contracts/`` by ``just contracts``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from passerelle_contracts.directory import FEDERATION_EVENTS
from passerelle_contracts.events import ALL_EVENTS
from passerelle_contracts.rpc import ALL_RPC


def render_schemas() -> dict[str, str]:
    """File name → JSON text, for every message model (stable, sorted keys)."""
    out: dict[str, str] = {}
    for model in (*ALL_EVENTS, *FEDERATION_EVENTS, *ALL_RPC):
        schema = model.model_json_schema(mode="serialization")
        schema["x-subject"] = model.subject
        out[f"{model.__name__}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def write_schemas(directory: Path) -> list[Path]:
    """Write the schemas, removing stale files; return the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    rendered = render_schemas()
    for stale in directory.glob("*.json"):
        if stale.name not in rendered:
            stale.unlink()
    written = []
    for name, text in rendered.items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/contracts")
    for p in write_schemas(target):
        sys.stdout.write(f"{p}\n")
